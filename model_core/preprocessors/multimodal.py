"""One-hot labels, and the multimodal preprocessor that pads and concatenates modalities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from model_core.preprocessors.base import Preprocessed, Preprocessor


class OneHotPreprocessor(nn.Module):
    def __init__(self, *, num_labels: int) -> None:
        super().__init__()
        self.num_labels = num_labels

    @property
    def num_channels(self) -> int:
        return self.num_labels

    def forward(self, labels: torch.Tensor, *, interpolate_pos_encoding: bool = False) -> Preprocessed:
        """labels: (B, num_labels) -> one token (B, 1, num_labels)."""
        tokens = labels[:, None, :]
        return Preprocessed(inputs=tokens, without_pos=tokens, index_dims=(1,))


class MultimodalPreprocessor(nn.Module):
    """Each modality is padded with its own learned vector to a common width, optionally
    replaced by its learned mask token, and the modalities are concatenated in sorted
    name order.

    A mask probability of 1 replaces every token of that modality (the autoencoder's label),
    0 leaves it unchanged; both are deterministic. Values in between draw a Bernoulli mask.
    The mask is built in the inputs' dtype, so the model runs in bfloat16/float16 too.
    """

    def __init__(
        self,
        *,
        modalities: Mapping[str, Preprocessor],
        mask_probs: Mapping[str, float] | None = None,
        min_padding_size: int = 2,
    ) -> None:
        super().__init__()
        self.modalities = nn.ModuleDict(cast("Mapping[str, nn.Module]", modalities))  # each must be a module
        self.min_padding_size = min_padding_size
        self.mask_probs = dict(mask_probs or {})
        self.widths = {name: m.num_channels for name, m in modalities.items()}
        width = self.num_channels
        self.padding = nn.ParameterDict(
            {name: nn.Parameter(torch.empty(1, width - w)) for name, w in self.widths.items()}
        )
        self.mask = nn.ParameterDict({name: nn.Parameter(torch.empty(1, width)) for name in self.mask_probs})

    @property
    def num_channels(self) -> int:
        return max(self.widths.values()) + self.min_padding_size

    def forward(self, inputs: Mapping[str, torch.Tensor], *, interpolate_pos_encoding: bool = False) -> Preprocessed:
        missing = sorted(set(self.modalities) - set(inputs))
        if missing:
            raise ValueError(f"missing modalities {missing}; expected {sorted(self.modalities)}")
        padded: dict[str, torch.Tensor] = {}
        without_pos: dict[str, torch.Tensor] = {}
        sizes: dict[str, int] = {}
        for name in sorted(self.modalities):
            out: Preprocessed = self.modalities[name](inputs[name], interpolate_pos_encoding=interpolate_pos_encoding)
            if not isinstance(out.without_pos, torch.Tensor):
                raise TypeError(f"modality {name!r} is itself multimodal")
            x = out.inputs  # (B, M, C_m)
            b, m, _ = x.shape
            pad = self.padding[name].expand(b, m, -1)
            x = torch.cat([x, pad], dim=2)  # (B, M, C)
            p = self.mask_probs.get(name, 0.0)
            if p >= 1.0:
                x = self.mask[name].expand(b, m, -1)
            elif p > 0.0:
                mask = torch.bernoulli(torch.full((b, m, 1), p, device=x.device)).to(x.dtype)
                x = (1 - mask) * x + mask * self.mask[name]
            padded[name], sizes[name], without_pos[name] = x, m, out.without_pos
        inputs_cat = torch.cat([padded[name] for name in sorted(padded)], dim=1)  # (B, sum M, C)
        return Preprocessed(inputs=inputs_cat, without_pos=without_pos, sizes=sizes)
