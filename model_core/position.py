"""Position encodings: trainable tables and Fourier features, behind one interface.

Every encoding answers two questions: the features of a whole grid of positions
(`grid`), and the features of some of its points, given as flat indices (`at`).
Preprocessors and decoders ask those questions and never branch on the kind.

Fourier features follow the paper and both reference implementations: for positions
p in [-1, 1]^D and K bands per dimension with frequencies linspace(1, res_d / 2, K),
the encoding is [p, sin(pi f p), cos(pi f p)] (dimension-major), computed in float32
and cast to the model's dtype.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F


def linear_positions(index_dims: Sequence[int], *, device: torch.device | None = None) -> torch.Tensor:
    """The grid linspace(-1, 1, n_d) over every dimension, 'ij' order: (prod(index_dims), D)."""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float32, device=device) for n in index_dims]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*index_dims, D)
    return grid.reshape(-1, len(index_dims))  # (N, D)


def subsampled_positions(points: torch.Tensor, index_dims: Sequence[int]) -> torch.Tensor:
    """Positions of flat output indices `points` (N,) over `index_dims`: -1 + 2 idx / dim.

    This is the decoder's convention for subsampled queries (it differs from the
    inclusive linspace of `linear_positions`); returns (N, D) float32.
    """
    idx = torch.stack(torch.unravel_index(points, tuple(index_dims)), dim=1)  # (N, D)
    dims = torch.tensor(list(index_dims), device=points.device)
    return -1 + 2 * idx / dims[None, :]


def fourier_features(
    pos: torch.Tensor,
    *,
    num_bands: int,
    max_resolution: Sequence[int],
    concat_pos: bool = True,
    sine_only: bool = False,
) -> torch.Tensor:
    """pos: (N, D) float32 in [-1, 1] -> (N, [D +] D*K*(1 or 2))."""
    freqs = torch.stack(
        [torch.linspace(1.0, res / 2, num_bands, device=pos.device) for res in max_resolution]
    )  # (D, K)
    scaled = (pos[:, :, None] * freqs[None]).reshape(pos.shape[0], freqs.numel())  # (N, D*K)
    parts = [torch.sin(math.pi * scaled)]
    if not sine_only:
        parts.append(torch.cos(math.pi * scaled))
    if concat_pos:
        parts.insert(0, pos)
    return torch.cat(parts, dim=-1)


class PositionEncoding(nn.Module, ABC):
    """Features for the positions of a grid of `index_dims` (e.g. (H, W) or (T, H, W))."""

    @property
    @abstractmethod
    def num_dimensions(self) -> int:
        """D, the rank of the grids this encoding was made for."""

    @property
    @abstractmethod
    def output_size(self) -> int:
        """Feature channels per position."""

    @abstractmethod
    def grid(
        self, index_dims: Sequence[int], *, device: torch.device, dtype: torch.dtype, interpolate: bool = False
    ) -> torch.Tensor:
        """Features of every position of the grid, row-major: (prod(index_dims), output_size).

        interpolate: a learned table may be resized to a 2-D grid it was not trained at.
        """

    @abstractmethod
    def at(self, points: torch.Tensor, index_dims: Sequence[int], *, dtype: torch.dtype) -> torch.Tensor:
        """Features of flat grid indices `points` (any shape, on the wanted device):
        (*points.shape, output_size)."""


class FourierPositionEncoding(PositionEncoding):
    """Parameter-free Fourier features; full grids cached per (index_dims, device, dtype)."""

    _CACHE_SIZE = 8

    def __init__(
        self, *, num_bands: int, max_resolution: Sequence[int], concat_pos: bool = True, sine_only: bool = False
    ) -> None:
        super().__init__()
        self.num_bands = num_bands
        self.max_resolution = tuple(max_resolution)
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        self._cache: OrderedDict[tuple[tuple[int, ...], str, torch.dtype], torch.Tensor] = OrderedDict()

    @property
    def num_dimensions(self) -> int:
        return len(self.max_resolution)

    @property
    def output_size(self) -> int:
        size = self.num_bands * self.num_dimensions * (1 if self.sine_only else 2)
        return size + (self.num_dimensions if self.concat_pos else 0)

    def encode(self, pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Features of explicit positions pos: (N, D) -> (N, output_size)."""
        return fourier_features(
            pos.float(),
            num_bands=self.num_bands,
            max_resolution=self.max_resolution,
            concat_pos=self.concat_pos,
            sine_only=self.sine_only,
        ).to(dtype)

    def grid(
        self, index_dims: Sequence[int], *, device: torch.device, dtype: torch.dtype, interpolate: bool = False
    ) -> torch.Tensor:
        key = (tuple(int(d) for d in index_dims), str(device), dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = self.encode(linear_positions(key[0], device=device), dtype)
            self._cache[key] = cached
            if len(self._cache) > self._CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return cached

    def at(self, points: torch.Tensor, index_dims: Sequence[int], *, dtype: torch.dtype) -> torch.Tensor:
        features = self.encode(subsampled_positions(points.reshape(-1), index_dims), dtype)  # (N, C)
        return features.reshape(*points.shape, features.shape[-1])  # (*points.shape, C)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FourierPositionEncoding:
        self._cache.clear()  # a device/dtype move invalidates the cache
        return super()._apply(fn, recurse)


class TrainablePositionEncoding(PositionEncoding):
    """A learned table of prod(index_dims) positions x num_channels."""

    def __init__(self, *, index_dims: int | Sequence[int], num_channels: int) -> None:
        super().__init__()
        dims = (index_dims,) if isinstance(index_dims, int) else tuple(index_dims)
        self.index_dims = dims
        self.position_embeddings = nn.Parameter(torch.empty(math.prod(dims), num_channels))

    @property
    def num_dimensions(self) -> int:
        return len(self.index_dims)

    @property
    def output_size(self) -> int:
        return self.position_embeddings.shape[1]

    def grid(
        self, index_dims: Sequence[int], *, device: torch.device, dtype: torch.dtype, interpolate: bool = False
    ) -> torch.Tensor:
        """The table; with `interpolate`, bicubically resized to the (H, W) of index_dims[:2]."""
        table = self.position_embeddings  # (N, C)
        if interpolate:
            return self._resized(table, (int(index_dims[0]), int(index_dims[1])))
        if math.prod(index_dims) != table.shape[0]:
            raise ValueError(
                f"input gives {math.prod(index_dims)} positions {tuple(index_dims)} but the learned position "
                f"table has {table.shape[0]}; resize the input or pass interpolate_pos_encoding=True"
            )
        return table

    def at(self, points: torch.Tensor, index_dims: Sequence[int], *, dtype: torch.dtype) -> torch.Tensor:
        return self.position_embeddings[points]

    @staticmethod
    def _resized(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        side = math.isqrt(table.shape[0])
        if size == (side, side):
            return table
        grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, side, side)
        grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)  # (1, C, H, W)
        return grid.reshape(1, table.shape[1], -1)[0].transpose(0, 1)  # (H*W, C)
