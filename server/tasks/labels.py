"""Logits -> ranked (label, score) pairs, the way the HF classification pipelines do it."""

from __future__ import annotations

import json
from typing import Any

import torch

from server.limits import Limits
from server.schemas import Function

_ENTRY_BYTES = 48  # {"label":,"score":} and the score's digits


def default_function(config: Any) -> Function:
    """As the HF pipelines: sigmoid for one label or multi-label checkpoints, softmax otherwise."""
    problem_type = getattr(config, "problem_type", None) or (getattr(config, "extra", None) or {}).get("problem_type")
    return "sigmoid" if config.num_labels == 1 or problem_type == "multi_label_classification" else "softmax"


def apply_function(logits: torch.Tensor, function: Function) -> torch.Tensor:
    """Scores over the last axis of float logits."""
    if function == "softmax":
        return logits.softmax(-1)
    return logits.sigmoid() if function == "sigmoid" else logits


def rank(logits: torch.Tensor, *, id2label: dict[int, str], function: Function, top_k: int) -> list[tuple[str, float]]:
    """logits (C,) -> the top_k labels, best first."""
    scores = apply_function(logits.float(), function)
    values, indexes = scores.topk(min(top_k, scores.shape[-1]))
    return [(id2label.get(i, f"LABEL_{i}"), v) for v, i in zip(values.tolist(), indexes.tolist(), strict=True)]


def as_labels(pairs: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """The answer's JSON: [{"label", "score"}], best first (the shape of `schemas.LabelScore`)."""
    return [{"label": label, "score": score} for label, score in pairs]


def label_bytes(id2label: dict[int, str]) -> int:
    """The JSON size of one answer entry with the longest label."""
    longest = max((len(json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")) for v in id2label.values()),
                  default=16)
    return longest + _ENTRY_BYTES


def check_labels(limits: Limits, *, rows: int, top_k: int, entry_bytes: int, what: str) -> int:
    """Refuse (413) an answer of `rows` ranked lists of `top_k` labels over the limits; returns its entries."""
    entries = rows * top_k
    limits.check_candidates(entries, f"{rows} {what} x top_k {top_k}")
    limits.check_answer(entries * entry_bytes, f"{entries} labels", f"lower top_k, or send fewer {what}")
    return entries
