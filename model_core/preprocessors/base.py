"""What every preprocessor returns and promises, and the position features image and
audio tokens share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

from model_core.position import PositionEncoding

ConcatOrAdd = Literal["concat", "add"]
# A task's raw inputs: one tensor, or one per modality.
Inputs = torch.Tensor | Mapping[str, torch.Tensor]


@dataclass
class Preprocessed:
    """inputs: (B, M, C) with positions; without_pos: the same before positions were added
    (a tensor, or a dict per modality); sizes: tokens per modality (multimodal only);
    index_dims: the spatial/temporal grid the tokens came from (e.g. (H, W))."""

    inputs: torch.Tensor
    without_pos: torch.Tensor | dict[str, torch.Tensor]
    sizes: dict[str, int] | None = None
    index_dims: tuple[int, ...] = field(default_factory=tuple)


class Preprocessor(Protocol):
    """Raw inputs -> encoder inputs (B, M, num_channels)."""

    @property
    def num_channels(self) -> int: ...

    def __call__(self, inputs: Inputs, /, *, interpolate_pos_encoding: bool = False) -> Preprocessed: ...


def with_positions(tokens: torch.Tensor, pos: torch.Tensor, how: ConcatOrAdd) -> torch.Tensor:
    """tokens: (B, M, C); pos: (M, P) or (B, M, P) -> (B, M, C + P) or (B, M, C)."""
    pos = pos.expand(tokens.shape[0], *pos.shape[-2:]) if pos.dim() == 2 else pos
    return torch.cat([tokens, pos], dim=-1) if how == "concat" else tokens + pos


class PositionedTokens(nn.Module):
    """Base of the preprocessors whose tokens get position features, concatenated or added,
    optionally projected first. Subclasses call `_set_positions` where the checkpoints
    register `position_embeddings` and `positions_projection`."""

    position_embeddings: PositionEncoding
    positions_projection: nn.Module
    concat_or_add_pos: ConcatOrAdd
    project_pos_dim: int

    def _set_positions(
        self, *, position_encoding: PositionEncoding, concat_or_add_pos: ConcatOrAdd, project_pos_dim: int
    ) -> None:
        self.concat_or_add_pos = concat_or_add_pos
        self.project_pos_dim = project_pos_dim
        self.position_embeddings = position_encoding
        self.positions_projection = (
            nn.Linear(position_encoding.output_size, project_pos_dim) if project_pos_dim > 0 else nn.Identity()
        )

    def _channels(self, token_channels: int) -> int:
        """Encoder input width for tokens of `token_channels`."""
        pos_dim = self.project_pos_dim if self.project_pos_dim > 0 else self.position_embeddings.output_size
        return pos_dim if self.concat_or_add_pos == "add" else token_channels + pos_dim

    def _positioned(
        self, tokens: torch.Tensor, index_dims: Sequence[int], *, interpolate: bool = False
    ) -> Preprocessed:
        """tokens: (B, M, C) over the grid `index_dims` -> with their position features."""
        enc = self.position_embeddings
        pos = self.positions_projection(
            enc.grid(index_dims, device=tokens.device, dtype=tokens.dtype, interpolate=interpolate)
        )  # (M, P)
        return Preprocessed(
            inputs=with_positions(tokens, pos, self.concat_or_add_pos),
            without_pos=tokens,
            index_dims=tuple(index_dims),
        )
