"""Byte embeddings plus a learned position table."""

from __future__ import annotations

import torch
from torch import nn

from model_core.preprocessors.base import Preprocessed


class TextPreprocessor(nn.Module):
    def __init__(self, *, vocab_size: int, d_model: int, max_position_embeddings: int) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, d_model)
        self.position_embeddings = nn.Embedding(max_position_embeddings, d_model)

    @property
    def num_channels(self) -> int:
        return self.embeddings.embedding_dim

    def forward(self, input_ids: torch.Tensor, *, interpolate_pos_encoding: bool = False) -> Preprocessed:
        """input_ids: (B, L) with L <= max_position_embeddings -> (B, L, d_model)."""
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence of {length} tokens exceeds max_position_embeddings "
                f"({self.position_embeddings.num_embeddings})"
            )
        tokens = self.embeddings(input_ids)  # (B, L, d_model)
        inputs = tokens + self.position_embeddings.weight[:length]
        return Preprocessed(inputs=inputs, without_pos=tokens, index_dims=(length,))
