"""Perceiver IO: preprocessor -> encoder (cross-attend, then latent self-attention) ->
decoder -> postprocessor, each injected."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model_core.attention import AttentionLayer, AttentionOptions
from model_core.decoders.base import Decoder, Points
from model_core.postprocessors import Postprocessed, Postprocessor
from model_core.preprocessors.base import Inputs, Preprocessed, Preprocessor


class Latents(nn.Module):
    def __init__(self, *, num_latents: int, d_latents: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.empty(num_latents, d_latents))

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.latents.expand(batch_size, -1, -1)  # (B, L, D)


class Encoder(nn.Module):
    """Latents cross-attend to the inputs once, then `num_blocks` passes through the
    same `num_self_attends_per_block` self-attention layers (weights shared by blocks)."""

    def __init__(
        self,
        *,
        kv_dim: int,
        d_latents: int,
        num_blocks: int,
        num_self_attends_per_block: int,
        cross_attention: AttentionOptions,
        self_attention: AttentionOptions,
    ) -> None:
        super().__init__()
        for options in (self_attention, cross_attention):
            heads = options.get("num_heads", 1)
            if d_latents % heads:
                raise ValueError(f"d_latents ({d_latents}) must be divisible by the number of heads ({heads})")
        self.d_latents = d_latents
        self.num_blocks = num_blocks
        self.cross_attention = AttentionLayer(
            q_dim=d_latents, kv_dim=kv_dim, is_cross_attention=True, **cross_attention
        )
        self.self_attends = nn.ModuleList(
            AttentionLayer(q_dim=d_latents, kv_dim=d_latents, is_cross_attention=False, **self_attention)
            for _ in range(num_self_attends_per_block)
        )

    def forward(self, latents: torch.Tensor, inputs: torch.Tensor, input_mask: torch.Tensor | None) -> torch.Tensor:
        """latents: (B, L, D); inputs: (B, M, C); input_mask: bool (B, M) or None -> (B, L, D)."""
        z = self.cross_attention(latents, inputs, input_mask)
        for _ in range(self.num_blocks):
            for layer in self.self_attends:
                z = layer(z)
        return z


@dataclass
class Encoded:
    """The encoder's state: everything decoding needs, so a clip is encoded once and
    decoded in as many passes as the caller likes."""

    latents: torch.Tensor  # (B, L, D)
    pre: Preprocessed


class PerceiverModel(nn.Module):
    def __init__(
        self,
        *,
        input_preprocessor: Preprocessor,
        num_latents: int,
        encoder: Encoder,
        decoder: Decoder,
        output_postprocessor: Postprocessor | None = None,
    ) -> None:
        super().__init__()
        self.input_preprocessor = input_preprocessor
        self.embeddings = Latents(num_latents=num_latents, d_latents=encoder.d_latents)
        self.encoder = encoder
        self.decoder = decoder
        self.output_postprocessor = output_postprocessor

    def encode(
        self, inputs: Inputs, attention_mask: torch.Tensor | None = None, *, interpolate_pos_encoding: bool = False
    ) -> Encoded:
        """attention_mask: (B, M), nonzero where an input token is real (text padding)."""
        pre = self.input_preprocessor(inputs, interpolate_pos_encoding=interpolate_pos_encoding)
        mask = None
        # An all-ones mask is dropped (the unmasked kernels are faster) when that can be seen
        # without a device sync: a host tensor is checked before its copy, a device one is kept.
        if attention_mask is not None and not (attention_mask.device.type == "cpu" and bool(attention_mask.all())):
            mask = attention_mask.to(device=pre.inputs.device, dtype=torch.bool, non_blocking=True)
        latents = self.encoder(self.embeddings(pre.inputs.shape[0]), pre.inputs, mask)
        return Encoded(latents=latents, pre=pre)

    def decode(self, encoded: Encoded, points: Points = None) -> Postprocessed:
        """Outputs for every output point, or only for `points` (see `decoders.Points`)."""
        latents, pre = encoded.latents, encoded.pre
        queries = self.decoder.queries(
            pre, points, batch_size=latents.shape[0], device=latents.device, dtype=latents.dtype
        )  # (B, N, C_q)
        out = self.decoder(queries, latents)  # (B, N, C)
        shape = self.decoder.output_shape(pre, points)
        out = out.reshape(out.shape[0], *shape.index_dims, out.shape[-1])  # (B, *index_dims, C)
        if self.output_postprocessor is not None:
            return self.output_postprocessor(out, shape.sizes)
        return out

    def forward(
        self, inputs: Inputs, attention_mask: torch.Tensor | None = None, points: Points = None
    ) -> Postprocessed:
        return self.decode(self.encode(inputs, attention_mask), points)
