"""A classifier's classes and its logits ranked into (label, score) pairs, the way the HF pipelines do it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from server.limits import Limits

if TYPE_CHECKING:  # torch only where logits are ranked: the body-parsing helper imports `Function`
    import torch

Function = Literal["softmax", "sigmoid", "none"]  # how logits become scores
DEFAULT_TOP_K = 5  # ranked entries an answer holds unless the request says otherwise (text classes: all)
_ENTRY_BYTES = 48  # {"label":,"score":} and the score's digits


@dataclass(frozen=True)
class Labels:
    """The classes along a classifier's last axis: the checkpoint's id2label, else LABEL_<i>."""

    names: tuple[str, ...]
    function: Function  # the checkpoint's own: sigmoid for one label or multi-label, softmax otherwise (HF's)
    entry_bytes: int  # the JSON size of one answer entry with the longest label

    @classmethod
    def of(cls, config: Any) -> Labels:
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        names = tuple(id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels))
        problem = getattr(config, "problem_type", None) or (getattr(config, "extra", None) or {}).get("problem_type")
        function: Function = (
            "sigmoid" if config.num_labels == 1 or problem == "multi_label_classification" else "softmax"
        )
        longest = max(
            (len(json.dumps(n, ensure_ascii=False).encode("utf-8", "surrogatepass")) for n in names), default=16
        )
        return cls(names, function, longest + _ENTRY_BYTES)

    def __len__(self) -> int:
        return len(self.names)

    def rank(self, logits: torch.Tensor, *, top_k: int, function: Function | None = None) -> list[tuple[str, float]]:
        """logits (C,) -> the top_k (label, score) pairs, best first."""
        scores = apply_function(logits.float(), function or self.function)
        values, indexes = scores.topk(min(top_k, scores.shape[-1]))
        return [(self.names[i], v) for v, i in zip(values.tolist(), indexes.tolist(), strict=True)]

    def check(self, limits: Limits, *, rows: int, top_k: int, what: str) -> int:
        """Refuse (413) an answer of `rows` ranked lists of `top_k` labels over the limits; returns its entries."""
        entries = rows * min(top_k, len(self))
        limits.check_candidates(entries, f"{rows} {what} x top_k {min(top_k, len(self))}")
        limits.check_answer(entries * self.entry_bytes, f"{entries} labels", f"lower top_k, or send fewer {what}")
        return entries


def apply_function(logits: torch.Tensor, function: Function) -> torch.Tensor:
    """Scores over the last axis of float logits."""
    if function == "softmax":
        return logits.softmax(-1)
    return logits.sigmoid() if function == "sigmoid" else logits


def as_labels(pairs: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """The answer's JSON: [{"label", "score"}], best first (the shape of `schemas.LabelScore`)."""
    return [{"label": label, "score": score} for label, score in pairs]
