"""text-classification: one classification query per text; labels from the checkpoint's id2label.

Steps: prepare (tokenize) -> collate (pad to the batch's length bucket) -> forward -> split (one logits row per
text) -> respond (rank the row into labels, as the request asks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_core import PerceiverForTask
from server.tasks.labels import Function, Labels
from server.tasks.text import TextCodec


@dataclass(frozen=True)
class TextItem:
    ids: tuple[int, ...]


class TextClassificationRunner:
    def __init__(self, model: PerceiverForTask, *, device: torch.device) -> None:
        self.model, self.device = model, device
        self.codec = TextCodec(max_length=model.config.max_position_embeddings)
        self.labels = Labels.of(model.config)

    def prepare(self, text: str) -> TextItem:
        return TextItem(tuple(self.codec.encode(text)))

    def prepare_ids(self, ids: Sequence[int]) -> TextItem:
        """Token ids as the byte tokenizer makes them ([CLS] bytes [SEP], no padding)."""
        return TextItem(self.codec.check_ids(ids))

    def key(self, item: TextItem) -> int:
        return self.codec.bucket(item.ids)

    def collate(self, items: Sequence[TextItem]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.codec.pad([i.ids for i in items], self.device)  # (B, L) each

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = batch
        return self.model(input_ids, attention_mask=attention_mask).logits  # (B, num_labels)

    def split(self, logits: torch.Tensor, items: Sequence[TextItem]) -> list[torch.Tensor]:
        return list(logits.float().cpu().unbind(0))  # (C,) each

    def respond(self, logits: torch.Tensor, *, top_k: int | None, function: Function | None) -> list[tuple[str, float]]:
        """Every label by default, as the HF text-classification payload lists them."""
        return self.labels.rank(logits, top_k=top_k or len(self.labels), function=function)
