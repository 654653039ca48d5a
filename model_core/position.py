"""Position encodings: trainable tables and Fourier features.

Fourier features follow the paper and both reference implementations: for positions
p in [-1, 1]^D and K bands per dimension with frequencies linspace(1, res_d / 2, K),
the encoding is [p, sin(pi f p), cos(pi f p)] (dimension-major), computed in float32
and cast to the model's dtype.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def linear_positions(index_dims: Sequence[int], *, device: torch.device | None = None) -> torch.Tensor:
    """The grid linspace(-1, 1, n_d) over every dimension, 'ij' order: (prod(index_dims), D)."""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float32, device=device) for n in index_dims]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*index_dims, D)
    return grid.reshape(-1, len(index_dims))


def subsampled_positions(
    points: torch.Tensor, index_dims: Sequence[int]
) -> torch.Tensor:
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


class FourierPositionEncoding(nn.Module):
    """Parameter-free Fourier features, cached per (index_dims, device, dtype)."""

    _CACHE_SIZE = 8

    def __init__(
        self, *, num_bands: int, max_resolution: Sequence[int], concat_pos: bool = True, sine_only: bool = False
    ) -> None:
        super().__init__()
        self.num_bands = num_bands
        self.max_resolution = tuple(max_resolution)
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

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

    def grid(self, index_dims: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Features of the full linear grid over index_dims: (prod(index_dims), output_size)."""
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

    def _apply(self, fn, recurse=True):  # a device/dtype move invalidates the cache
        self._cache.clear()
        return super()._apply(fn, recurse)


class TrainablePositionEncoding(nn.Module):
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

    def table(self, spatial_size: Sequence[int] | None = None) -> torch.Tensor:
        """(N, C), bicubically resized to `spatial_size` (H, W) when given and different."""
        table = self.position_embeddings
        if spatial_size is None:
            return table
        side = math.isqrt(table.shape[0])
        h, w = spatial_size
        if (h, w) == (side, side):
            return table
        grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, side, side)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.reshape(1, table.shape[1], -1)[0].transpose(0, 1)  # (H*W, C)
