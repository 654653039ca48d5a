"""Perceiver IO: preprocessor -> encoder (cross-attend, then latent self-attention) ->
decoder -> postprocessor, each injected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model_core.attention import AttentionLayer
from model_core.preprocessors.base import Preprocessed


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
        num_cross_attention_heads: int,
        num_self_attention_heads: int,
        qk_channels: int | None,
        v_channels: int | None,
        cross_attention_widening_factor: int,
        self_attention_widening_factor: int,
        use_query_residual: bool,
        shape_for_attention: str,
        hidden_act: str,
    ) -> None:
        super().__init__()
        for heads in (num_self_attention_heads, num_cross_attention_heads):
            if d_latents % heads:
                raise ValueError(f"d_latents ({d_latents}) must be divisible by the number of heads ({heads})")
        self.num_blocks = num_blocks
        self.cross_attention = AttentionLayer(
            q_dim=d_latents,
            kv_dim=kv_dim,
            is_cross_attention=True,
            qk_channels=qk_channels,
            v_channels=v_channels,
            num_heads=num_cross_attention_heads,
            widening_factor=cross_attention_widening_factor,
            use_query_residual=use_query_residual,
            shape_for_attention=shape_for_attention,
            hidden_act=hidden_act,
        )
        self.self_attends = nn.ModuleList(
            AttentionLayer(
                q_dim=d_latents,
                kv_dim=d_latents,
                is_cross_attention=False,
                qk_channels=qk_channels,
                v_channels=v_channels,
                num_heads=num_self_attention_heads,
                widening_factor=self_attention_widening_factor,
                hidden_act=hidden_act,
            )
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
        input_preprocessor: nn.Module,
        decoder: nn.Module,
        num_latents: int,
        d_latents: int,
        output_postprocessor: nn.Module | None = None,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        self.input_preprocessor = input_preprocessor
        self.embeddings = Latents(num_latents=num_latents, d_latents=d_latents)
        self.encoder = Encoder(kv_dim=input_preprocessor.num_channels, d_latents=d_latents, **encoder_kwargs)
        self.decoder = decoder
        self.output_postprocessor = output_postprocessor

    def encode(self, inputs: Any, attention_mask: torch.Tensor | None = None, **prep_kwargs: Any) -> Encoded:
        """attention_mask: (B, M), nonzero where an input token is real (text padding)."""
        pre = self.input_preprocessor(inputs, **prep_kwargs)
        mask = None
        # An all-ones mask is dropped (the unmasked kernels are faster) when that can be seen
        # without a device sync: a host tensor is checked before its copy, a device one is kept.
        if attention_mask is not None and not (attention_mask.device.type == "cpu" and bool(attention_mask.all())):
            mask = attention_mask.to(device=pre.inputs.device, dtype=torch.bool, non_blocking=True)
        latents = self.encoder(self.embeddings(pre.inputs.shape[0]), pre.inputs, mask)
        return Encoded(latents=latents, pre=pre)

    def decode(self, encoded: Encoded, points: Any = None) -> Any:
        """Outputs for every output point, or only for `points` (see the decoder)."""
        out, sizes = self.decoder.decode(encoded.latents, encoded.pre, points)
        if self.output_postprocessor is not None:
            out = self.output_postprocessor(out, sizes)
        return out

    def forward(self, inputs: Any, attention_mask: torch.Tensor | None = None, points: Any = None, **prep_kwargs):
        return self.decode(self.encode(inputs, attention_mask, **prep_kwargs), points)
