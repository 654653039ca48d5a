"""The basic decoder: output queries cross-attend to the latents.

A decoder builds its queries (for all output points, or a subset: queries attend
independently, so decoding a subset gives the same values at those points), then one
cross-attention layer maps them to outputs. With `position_encoding_only` it only builds
queries, for a multimodal decoder that owns the shared attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from model_core.attention import AttentionLayer
from model_core.position import FourierPositionEncoding, TrainablePositionEncoding, subsampled_positions
from model_core.preprocessors.base import PositionEncoding, Preprocessed

# What a decoder's `decode` returns: outputs, and their count per modality (multimodal only).
Decoded = tuple[torch.Tensor, dict[str, int] | None]


class BasicDecoder(nn.Module):
    def __init__(
        self,
        *,
        d_latents: int,
        output_num_channels: int,
        position_encoding: PositionEncoding | None,
        output_index_dims: Sequence[int] | None = None,
        num_channels: int = 128,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        num_heads: int = 1,
        widening_factor: int = 1,
        use_query_residual: bool = False,
        concat_preprocessed_input: bool = False,
        final_project: bool = True,
        position_encoding_only: bool = False,
        shape_for_attention: str = "kv",
        hidden_act: str = "gelu",
    ) -> None:
        super().__init__()
        self.output_num_channels = output_num_channels
        self.output_index_dims = None if output_index_dims is None else tuple(output_index_dims)
        self.num_channels = num_channels
        self.concat_preprocessed_input = concat_preprocessed_input
        self.final_project = final_project
        self.position_encoding_only = position_encoding_only
        if position_encoding is not None:
            self.output_position_encodings = position_encoding
        if not position_encoding_only:
            self.decoding_cross_attention = AttentionLayer(
                q_dim=num_channels,
                kv_dim=d_latents,
                is_cross_attention=True,
                qk_channels=qk_channels,
                v_channels=v_channels,
                num_heads=num_heads,
                widening_factor=widening_factor,
                use_query_residual=use_query_residual,
                shape_for_attention=shape_for_attention,
                hidden_act=hidden_act,
            )
            self.final_layer = nn.Linear(num_channels, output_num_channels) if final_project else nn.Identity()

    @property
    def num_query_channels(self) -> int:
        if self.position_encoding_only:
            return self.output_position_encodings.output_size
        return self.output_num_channels if self.final_project else self.num_channels

    @property
    def num_outputs(self) -> int:
        return math.prod(self.output_index_dims)

    def queries(
        self,
        *,
        batch_size: int,
        points: torch.Tensor | None = None,
        inputs_without_pos: torch.Tensor | None = None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Position queries (B, N, C) for every output point, or for `points`.

        points: flat output indices, (N,) shared by the batch or (B, N) per example.
        """
        enc = self.output_position_encodings
        if isinstance(enc, TrainablePositionEncoding):
            table = enc.table()  # (N_all, C)
            if points is None:
                q = table.expand(batch_size, *table.shape)
            else:
                q = table[points.to(table.device)]
                q = q.expand(batch_size, *q.shape) if q.dim() == 2 else q
        else:
            assert isinstance(enc, FourierPositionEncoding)
            if points is None:
                q = enc.grid(self.output_index_dims, device=device, dtype=dtype)
                q = q.expand(batch_size, *q.shape)
            else:
                flat = points.to(device).reshape(-1)
                q = enc.encode(subsampled_positions(flat, self.output_index_dims), dtype)
                q = q.reshape(*points.shape, q.shape[-1])
                q = q.expand(batch_size, *q.shape) if q.dim() == 2 else q
        if self.concat_preprocessed_input:
            if inputs_without_pos is None:
                raise ValueError("this decoder concatenates the preprocessed inputs to its queries")
            q = torch.cat([inputs_without_pos, q], dim=-1)
        return q

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """queries: (B, N, num_channels); latents: (B, L, d_latents) -> (B, N, output_num_channels)."""
        return self.final_layer(self.decoding_cross_attention(queries, latents))

    def decode(self, latents: torch.Tensor, pre: Preprocessed, points: torch.Tensor | None = None) -> Decoded:
        q = self.queries(
            batch_size=latents.shape[0],
            points=points,
            inputs_without_pos=pre.without_pos,
            device=latents.device,
            dtype=latents.dtype,
        )
        return self(q, latents), None


class _Wrapped(nn.Module):
    """A basic decoder (at `.decoder`, as the checkpoints nest it) whose outputs a subclass
    reshapes in `forward`; queries come from the inner decoder."""

    def __init__(self, **decoder_kwargs) -> None:
        super().__init__()
        self.decoder = BasicDecoder(**decoder_kwargs)

    @property
    def num_query_channels(self) -> int:
        return self.decoder.num_query_channels

    def queries(self, **kwargs) -> torch.Tensor:
        return self.decoder.queries(**kwargs)

    decode = BasicDecoder.decode


class ClassificationDecoder(_Wrapped):
    """One learned query -> logits (B, num_labels)."""

    def __init__(self, **decoder_kwargs) -> None:
        super().__init__(output_index_dims=(1,), **decoder_kwargs)

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(queries, latents)[:, 0, :]


class OpticalFlowDecoder(_Wrapped):
    """Queries are the preprocessed input pixels themselves; outputs (B, H, W, 2) / rescale."""

    def __init__(self, *, rescale_factor: float = 100.0, **decoder_kwargs) -> None:
        super().__init__(**decoder_kwargs)
        self.rescale_factor = rescale_factor

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(queries, latents) / self.rescale_factor

    def decode(self, latents: torch.Tensor, pre: Preprocessed, points: torch.Tensor | None = None) -> Decoded:
        """All pixels -> (B, H, W, 2); `points` (N,) flat pixel indices -> (B, N, 2)."""
        if points is None:
            out = self(pre.inputs, latents)
            return out.reshape(out.shape[0], *pre.index_dims, out.shape[-1]), None
        return self(pre.inputs[:, points.to(pre.inputs.device)], latents), None


class VideoAutoencodingDecoder(_Wrapped):
    """Queries over a (T, H, W) grid; decoding every point gives (B, T, H, W, C)."""

    def __init__(self, *, output_shape: Sequence[int], **decoder_kwargs) -> None:
        if len(output_shape) != 4:
            raise ValueError(f"expected a rank-4 output_shape (B, T, H, W), got {list(output_shape)}")
        super().__init__(output_index_dims=tuple(output_shape)[1:], **decoder_kwargs)
        self.output_shape = tuple(output_shape)

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        out = self.decoder(queries, latents)
        if out.shape[1] == self.decoder.num_outputs:
            out = out.reshape(out.shape[0], *self.output_shape[1:], out.shape[-1])
        return out


class ProjectionDecoder(nn.Module):
    """No queries: the mean latent, linearly projected to logits (B, num_labels)."""

    def __init__(self, *, d_latents: int, num_labels: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(d_latents, num_labels)

    def queries(self, **_: object) -> None:
        return None

    def forward(self, queries: None, latents: torch.Tensor) -> torch.Tensor:
        return self.classifier(latents.mean(dim=1))

    def decode(self, latents: torch.Tensor, pre: Preprocessed, points: None = None) -> Decoded:
        return self(None, latents), None
