"""text-classification: one classification query per text; labels from the checkpoint's id2label."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from server.schemas import Function
from server.tasks.labels import default_function, label_bytes, rank
from server.tasks.text import TextCodec


@dataclass(frozen=True)
class TextItem:
    ids: tuple[int, ...]
    top_k: int
    function: Function
    raw: bool = False  # split returns the logits row (C,) instead of ranked labels


class TextClassificationRunner:
    def __init__(self, model: torch.nn.Module, *, device: torch.device) -> None:
        self.model, self.device = model, device
        config = model.config
        self.codec = TextCodec(max_length=config.max_position_embeddings)
        self.id2label = {int(k): v for k, v in (config.id2label or {}).items()}
        self.num_labels = config.num_labels
        self.function = default_function(config)
        self.entry_bytes = label_bytes(self.id2label)

    def prepare(self, text: str, *, top_k: int | None, function: Function | None, raw: bool = False) -> TextItem:
        top_k = min(top_k or self.num_labels, self.num_labels)
        return TextItem(tuple(self.codec.encode(text)), top_k, function or self.function, raw)

    def prepare_ids(self, ids: Sequence[int]) -> TextItem:
        """Token ids as the byte tokenizer makes them ([CLS] bytes [SEP], no padding); answers logits."""
        return TextItem(self.codec.check_ids(ids), self.num_labels, self.function, raw=True)

    def key(self, item: TextItem) -> int:
        return self.codec.bucket(item.ids)

    def collate(self, items: Sequence[TextItem]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.codec.pad([i.ids for i in items], self.device)  # (B, L) each

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = batch
        return self.model(input_ids, attention_mask=attention_mask).logits  # (B, num_labels)

    def split(self, logits: torch.Tensor, items: Sequence[TextItem]) -> list[list[tuple[str, float]] | torch.Tensor]:
        logits = logits.cpu()
        return [row if i.raw else rank(row, id2label=self.id2label, function=i.function, top_k=i.top_k)
                for row, i in zip(logits, items, strict=True)]
