"""Output postprocessors: decoder outputs -> task outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn

# A task's outputs: one tensor, or one per modality.
Postprocessed = torch.Tensor | dict[str, torch.Tensor]


class Postprocessor(Protocol):
    def __call__(self, x: torch.Tensor, sizes: Mapping[str, int] | None, /) -> Postprocessed:
        """x: the decoder's outputs; sizes: outputs per modality, in sorted name order."""
        ...


class EmbeddingDecoder(nn.Module):
    """The language model head, tied to the input byte embeddings: h Eᵀ + b."""

    def __init__(self, *, vocab_size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        """hidden: (B, N, d_model); embedding_weight: (vocab, d_model) -> (B, N, vocab)."""
        return hidden @ embedding_weight.T + self.bias


class ProjectionPostprocessor(nn.Module):
    """(B, N, C) -> (B, N, out_channels)."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor, sizes: Mapping[str, int] | None = None) -> torch.Tensor:
        return self.classifier(x)


class ClassificationPostprocessor(ProjectionPostprocessor):
    """The first output point's logits: (B, N, C) -> (B, num_labels)."""

    def forward(self, x: torch.Tensor, sizes: Mapping[str, int] | None = None) -> torch.Tensor:
        return self.classifier(x[:, 0, :])


class AudioPostprocessor(ProjectionPostprocessor):
    """Audio patches back to samples: (B, N, C) -> (B, N * samples_per_patch)."""

    def forward(self, x: torch.Tensor, sizes: Mapping[str, int] | None = None) -> torch.Tensor:
        return self.classifier(x).reshape(x.shape[0], -1)  # (B, N * samples_per_patch)


class MultimodalPostprocessor(nn.Module):
    """Split (B, N, C) by modality sizes (sorted names) and postprocess each part."""

    def __init__(self, *, modalities: Mapping[str, ProjectionPostprocessor]) -> None:
        super().__init__()
        self.modalities = nn.ModuleDict(modalities)

    def forward(self, x: torch.Tensor, sizes: Mapping[str, int] | None) -> dict[str, torch.Tensor]:
        if sizes is None:
            raise ValueError("a multimodal postprocessor needs the output size of each modality")
        out, start = {}, 0
        for name in sorted(sizes):
            out[name] = self.modalities[name](x[:, start : start + sizes[name]])
            start += sizes[name]
        return out
