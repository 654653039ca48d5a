"""The basic decoder, and the decoders that nest one as the checkpoints do (`.decoder`).

A basic decoder builds position queries (for all output points, or a subset: queries
attend independently, so decoding a subset gives the same values at those points), then
one cross-attention layer maps them to outputs. With `position_encoding_only` it only
builds queries, for a multimodal decoder that owns the shared attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from model_core.attention import AttentionLayer, AttentionOptions
from model_core.decoders.base import OutputShape, Points, flat_points
from model_core.position import PositionEncoding
from model_core.preprocessors.base import Preprocessed


class BasicDecoder(nn.Module):
    """Queries from `position_encoding` over `output_index_dims`; without a position
    encoding the queries must come from elsewhere (a wrapping decoder builds them).
    `attention` defaults to DeepMind's decoder: one head, no query residual."""

    def __init__(
        self,
        *,
        d_latents: int,
        output_num_channels: int,
        position_encoding: PositionEncoding | None = None,
        output_index_dims: Sequence[int] = (),
        num_channels: int = 128,
        final_project: bool = True,
        position_encoding_only: bool = False,
        attention: AttentionOptions | None = None,
    ) -> None:
        super().__init__()
        self.output_num_channels = output_num_channels
        self.num_channels = num_channels
        self.num_query_channels = output_num_channels if final_project else num_channels
        self.output_index_dims = tuple(output_index_dims)
        self.output_position_encodings = position_encoding
        if position_encoding_only:  # a multimodal decoder's part: its queries are the position features
            self.num_query_channels = self._position_encoding().output_size
        else:
            options: AttentionOptions = {"use_query_residual": False, **(attention or {})}
            self.decoding_cross_attention = AttentionLayer(
                q_dim=num_channels, kv_dim=d_latents, is_cross_attention=True, **options
            )
            self.final_layer = nn.Linear(num_channels, output_num_channels) if final_project else nn.Identity()

    @property
    def num_outputs(self) -> int:
        return math.prod(self.output_index_dims)

    def _position_encoding(self) -> PositionEncoding:
        if self.output_position_encodings is None:
            raise ValueError("this decoder has no position encoding: its queries come from elsewhere")
        return self.output_position_encodings

    def queries(
        self, pre: Preprocessed, points: Points = None, *, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        enc, flat = self._position_encoding(), flat_points(points)
        if flat is None:
            q = enc.grid(self.output_index_dims, device=device, dtype=dtype)  # (N, C)
        else:
            q = enc.at(flat.to(device), self.output_index_dims, dtype=dtype)  # (N, C) or (B, N, C)
        return q.expand(batch_size, *q.shape) if q.dim() == 2 else q

    def output_shape(self, pre: Preprocessed, points: Points = None) -> OutputShape:
        flat = flat_points(points)
        return OutputShape((self.num_outputs if flat is None else flat.shape[-1],))

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """queries: (B, N, num_channels); latents: (B, L, d_latents) -> (B, N, output_num_channels)."""
        return self.final_layer(self.decoding_cross_attention(queries, latents))


class _Nested(nn.Module):
    """A basic decoder at `.decoder`, as the checkpoints nest it; subclasses change what
    differs (the queries, the output shape)."""

    def __init__(self, *, decoder: BasicDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    @property
    def num_query_channels(self) -> int:
        return self.decoder.num_query_channels

    def queries(
        self, pre: Preprocessed, points: Points = None, *, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return self.decoder.queries(pre, points, batch_size=batch_size, device=device, dtype=dtype)

    def output_shape(self, pre: Preprocessed, points: Points = None) -> OutputShape:
        return self.decoder.output_shape(pre, points)

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(queries, latents)


class ClassificationDecoder(_Nested):
    """One learned query -> logits (B, num_labels)."""

    def __init__(self, *, decoder: BasicDecoder) -> None:
        if decoder.output_index_dims != (1,):
            raise ValueError(f"a classification decoder has one query, not {decoder.output_index_dims}")
        super().__init__(decoder=decoder)

    def output_shape(self, pre: Preprocessed, points: Points = None) -> OutputShape:
        return OutputShape(())


class OpticalFlowDecoder(_Nested):
    """The queries are the preprocessed input pixels themselves; outputs (B, H, W, 2) for
    every pixel or (B, N, 2) for N flat pixel indices (N,), divided by `rescale_factor`."""

    def __init__(self, *, decoder: BasicDecoder, rescale_factor: float) -> None:
        super().__init__(decoder=decoder)
        self.rescale_factor = rescale_factor

    def queries(
        self, pre: Preprocessed, points: Points = None, *, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        flat = flat_points(points)
        return pre.inputs if flat is None else pre.inputs[:, flat.to(pre.inputs.device)]  # (B, N, C)

    def output_shape(self, pre: Preprocessed, points: Points = None) -> OutputShape:
        flat = flat_points(points)
        return OutputShape(pre.index_dims if flat is None else (flat.shape[-1],))

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(queries, latents) / self.rescale_factor


class VideoAutoencodingDecoder(_Nested):
    """Queries over the decoder's (T, H, W) grid; decoding every point gives (B, T, H, W, C)."""

    def __init__(self, *, decoder: BasicDecoder) -> None:
        if len(decoder.output_index_dims) != 3:
            raise ValueError(f"expected (T, H, W) output_index_dims, got {decoder.output_index_dims}")
        super().__init__(decoder=decoder)

    def output_shape(self, pre: Preprocessed, points: Points = None) -> OutputShape:
        flat = flat_points(points)
        if flat is None or flat.shape[-1] == self.decoder.num_outputs:
            return OutputShape(self.decoder.output_index_dims)
        return OutputShape((flat.shape[-1],))


class ProjectionDecoder(nn.Module):
    """No queries: the mean latent, linearly projected to logits (B, num_labels)."""

    def __init__(self, *, d_latents: int, num_labels: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(d_latents, num_labels)

    def queries(
        self, pre: Preprocessed, points: Points = None, *, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return torch.empty(batch_size, 0, 0, device=device, dtype=dtype)  # (B, 0, 0): none

    def output_shape(self, pre: Preprocessed, points: Points = None) -> OutputShape:
        return OutputShape(())

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.classifier(latents.mean(dim=1))  # (B, num_labels)
