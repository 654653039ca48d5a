"""What every preprocessor returns, and the position-encoding choice they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from model_core.position import FourierPositionEncoding, TrainablePositionEncoding

PositionEncoding = FourierPositionEncoding | TrainablePositionEncoding
ConcatOrAdd = Literal["concat", "add"]


@dataclass
class Preprocessed:
    """inputs: (B, M, C) with positions; without_pos: the same before positions were added
    (a tensor, or a dict per modality); sizes: tokens per modality (multimodal only);
    index_dims: the spatial/temporal grid the tokens came from (e.g. (H, W))."""

    inputs: torch.Tensor
    without_pos: torch.Tensor | dict[str, torch.Tensor]
    sizes: dict[str, int] | None = None
    index_dims: tuple[int, ...] = field(default_factory=tuple)


def positions_projection(in_dim: int, project_pos_dim: int) -> nn.Module:
    return nn.Linear(in_dim, project_pos_dim) if project_pos_dim > 0 else nn.Identity()


def with_positions(
    tokens: torch.Tensor, pos: torch.Tensor, how: ConcatOrAdd
) -> torch.Tensor:
    """tokens: (B, M, C); pos: (M, P) or (B, M, P) -> (B, M, C + P) or (B, M, C)."""
    pos = pos.expand(tokens.shape[0], *pos.shape[-2:]) if pos.dim() == 2 else pos
    return torch.cat([tokens, pos], dim=-1) if how == "concat" else tokens + pos
