"""Raw audio -> patches of consecutive samples, with positions."""

from __future__ import annotations

import torch
from torch import nn

from model_core.position import FourierPositionEncoding
from model_core.preprocessors.base import (
    ConcatOrAdd,
    PositionEncoding,
    Preprocessed,
    positions_projection,
    with_positions,
)


class AudioPreprocessor(nn.Module):
    def __init__(
        self,
        *,
        samples_per_patch: int,
        position_encoding: PositionEncoding,
        concat_or_add_pos: ConcatOrAdd = "concat",
        out_channels: int = 64,
        project_pos_dim: int = -1,
    ) -> None:
        super().__init__()
        self.samples_per_patch = samples_per_patch
        self.concat_or_add_pos = concat_or_add_pos
        self.project_pos_dim = project_pos_dim
        self.position_embeddings = position_encoding
        self.positions_projection = positions_projection(out_channels, project_pos_dim)

    @property
    def num_channels(self) -> int:
        pos_dim = self.project_pos_dim if self.project_pos_dim > 0 else self.position_embeddings.output_size
        return pos_dim if self.concat_or_add_pos == "add" else self.samples_per_patch + pos_dim

    def forward(self, audio: torch.Tensor) -> Preprocessed:
        """audio: (B, S, 1) or (B, S) samples -> (B, S / samples_per_patch, C)."""
        tokens = audio.reshape(audio.shape[0], -1, self.samples_per_patch)
        enc = self.position_embeddings
        if isinstance(enc, FourierPositionEncoding):
            pos = enc.grid((tokens.shape[1],), device=tokens.device, dtype=tokens.dtype)
        else:
            pos = enc.table()
        pos = self.positions_projection(pos)
        return Preprocessed(
            inputs=with_positions(tokens, pos, self.concat_or_add_pos),
            without_pos=tokens,
            index_dims=(tokens.shape[1],),
        )
