"""The multimodal decoder: per-modality queries, padded to a common width, share one
cross-attention to the latents."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from model_core.attention import AttentionOptions
from model_core.decoders.base import OutputShape, Points, QueryDecoder
from model_core.decoders.basic import BasicDecoder
from model_core.preprocessors.base import Preprocessed


def _per_modality(points: Points) -> Mapping[str, torch.Tensor | None]:
    if isinstance(points, torch.Tensor):
        raise TypeError("a multimodal decoder takes output points per modality (a mapping), not a tensor")
    return points or {}


class MultimodalDecoder(nn.Module):
    def __init__(
        self,
        *,
        modalities: Mapping[str, QueryDecoder],
        d_latents: int,
        output_num_channels: int,
        min_padding_size: int = 2,
        attention: AttentionOptions | None = None,
    ) -> None:
        super().__init__()
        self.modalities = nn.ModuleDict(cast("Mapping[str, nn.Module]", modalities))  # each must be a module
        self.min_padding_size = min_padding_size
        widths = {name: m.num_query_channels for name, m in modalities.items()}
        width = max(widths.values()) + min_padding_size
        self.decoder = BasicDecoder(
            d_latents=d_latents, output_num_channels=output_num_channels, num_channels=width, attention=attention
        )
        self.padding = nn.ParameterDict({name: nn.Parameter(torch.empty(1, width - w)) for name, w in widths.items()})

    @property
    def num_query_channels(self) -> int:
        return self.decoder.num_channels

    def _modality(self, name: str) -> QueryDecoder:
        return cast(QueryDecoder, self.modalities[name])

    def queries(
        self, pre: Preprocessed, points: Points = None, *, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Queries (B, N, C) of every modality in sorted name order."""
        per_modality, parts = _per_modality(points), []
        for name in sorted(self.modalities):
            q = self._modality(name).queries(
                pre, per_modality.get(name), batch_size=batch_size, device=device, dtype=dtype
            )
            q = q.flatten(1, -2)  # (B, N, C) whatever the point layout
            pad = self.padding[name].to(q.dtype).expand(batch_size, q.shape[1], -1)
            parts.append(torch.cat([q, pad], dim=2))  # (B, N, width)
        return torch.cat(parts, dim=1)

    def output_shape(self, pre: Preprocessed, points: Points = None) -> OutputShape:
        per_modality = _per_modality(points)
        sizes = {
            name: math.prod(self._modality(name).output_shape(pre, per_modality.get(name)).index_dims)
            for name in sorted(self.modalities)
        }
        return OutputShape((sum(sizes.values()),), sizes)

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(queries, latents)
