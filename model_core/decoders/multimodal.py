"""The multimodal decoder: per-modality queries, padded to a common width, share one
cross-attention to the latents."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from model_core.decoders.basic import BasicDecoder, Decoded
from model_core.preprocessors.base import Preprocessed


class MultimodalDecoder(nn.Module):
    def __init__(
        self,
        *,
        modalities: Mapping[str, nn.Module],
        d_latents: int,
        output_num_channels: int,
        min_padding_size: int = 2,
        **decoder_kwargs,
    ) -> None:
        super().__init__()
        self.modalities = nn.ModuleDict(modalities)
        self.min_padding_size = min_padding_size
        width = self.num_query_channels
        self.decoder = BasicDecoder(
            d_latents=d_latents,
            output_num_channels=output_num_channels,
            position_encoding=None,
            num_channels=width,
            **decoder_kwargs,
        )
        self.padding = nn.ParameterDict(
            {name: nn.Parameter(torch.empty(1, width - m.num_query_channels)) for name, m in modalities.items()}
        )

    @property
    def num_query_channels(self) -> int:
        return max(m.num_query_channels for m in self.modalities.values()) + self.min_padding_size

    def queries(
        self,
        *,
        batch_size: int,
        points: Mapping[str, torch.Tensor | None] | None = None,
        device: torch.device,
        dtype: torch.dtype,
        **_: object,
    ) -> tuple[torch.Tensor, dict[str, int]]:
        """Queries (B, N, C) of every modality in sorted order, and N per modality.

        points: flat output indices per modality (None: all of that modality's outputs).
        """
        points = points or {}
        parts, sizes = [], {}
        for name in sorted(self.modalities):
            q = self.modalities[name].queries(
                batch_size=batch_size, points=points.get(name), device=device, dtype=dtype
            )
            q = q.flatten(1, -2)  # (B, N, C) whatever the point layout
            pad = self.padding[name].to(q.dtype).expand(batch_size, q.shape[1], -1)
            parts.append(torch.cat([q, pad], dim=2))
            sizes[name] = q.shape[1]
        return torch.cat(parts, dim=1), sizes

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(queries, latents)

    def decode(
        self, latents: torch.Tensor, pre: Preprocessed, points: Mapping[str, torch.Tensor | None] | None = None
    ) -> Decoded:
        q, sizes = self.queries(batch_size=latents.shape[0], points=points, device=latents.device, dtype=latents.dtype)
        return self(q, latents), sizes
