"""Raw audio -> patches of consecutive samples, with positions."""

from __future__ import annotations

import torch

from model_core.position import PositionEncoding
from model_core.preprocessors.base import ConcatOrAdd, PositionedTokens, Preprocessed


class AudioPreprocessor(PositionedTokens):
    def __init__(
        self,
        *,
        samples_per_patch: int,
        position_encoding: PositionEncoding,
        concat_or_add_pos: ConcatOrAdd = "concat",
        project_pos_dim: int = -1,
    ) -> None:
        super().__init__()
        self.samples_per_patch = samples_per_patch
        self._set_positions(
            position_encoding=position_encoding, concat_or_add_pos=concat_or_add_pos, project_pos_dim=project_pos_dim
        )

    @property
    def num_channels(self) -> int:
        return self._channels(self.samples_per_patch)

    def forward(self, audio: torch.Tensor, *, interpolate_pos_encoding: bool = False) -> Preprocessed:
        """audio: (B, S, 1) or (B, S) samples -> (B, S / samples_per_patch, C)."""
        tokens = audio.reshape(audio.shape[0], -1, self.samples_per_patch)  # (B, S / P, P)
        return self._positioned(tokens, (tokens.shape[1],))
