"""The decoder contract, as DeepMind's decoders keep it: build the queries (optionally for
a subset of the output points), say the output's shape, attend to the latents.

`PerceiverModel.decode` drives any decoder through it:

    q = decoder.queries(pre, points, ...)       # (B, N, C_q)
    out = decoder(q, latents)                   # (B, N, C_out)
    shape = decoder.output_shape(pre, points)   # out -> (B, *shape.index_dims, C_out)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from model_core.preprocessors.base import Preprocessed

# Output points to decode: flat output indices, (N,) shared by the batch or (B, N) per
# example; per modality for a multimodal decoder (None there: all of that modality's);
# None: every output point.
Points = torch.Tensor | Mapping[str, torch.Tensor | None] | None


@dataclass(frozen=True)
class OutputShape:
    """index_dims: an example's outputs between the batch and channel axes ((H, W) for a
    flow field, (N,) for N points, () for one logit vector); sizes: outputs per modality,
    in sorted name order (multimodal decoders only)."""

    index_dims: tuple[int, ...]
    sizes: dict[str, int] | None = None


@runtime_checkable
class Decoder(Protocol):
    def queries(
        self, pre: Preprocessed, points: Points = None, *, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """The output queries (B, N, C_q): for every output point, or for `points`."""
        ...

    def output_shape(self, pre: Preprocessed, points: Points = None) -> OutputShape: ...

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """queries (B, N, C_q) attend to latents (B, L, D) -> (B, N, C_out)."""
        ...

    def __call__(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class QueryDecoder(Decoder, Protocol):
    """A decoder whose queries another decoder may borrow (a multimodal decoder pads and
    concatenates its modalities' queries)."""

    @property
    def num_query_channels(self) -> int: ...


def flat_points(points: Points) -> torch.Tensor | None:
    """The points of a single-output decoder: flat indices or None, never a per-modality mapping."""
    if points is None or isinstance(points, torch.Tensor):
        return points
    raise TypeError(f"this decoder takes flat output indices (a tensor), not {type(points).__name__}")
