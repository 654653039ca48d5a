"""Logits -> ranked (label, score) pairs, the way the HF classification pipelines do it."""

from __future__ import annotations

from typing import Any

import torch

from server.schemas import Function, LabelScore


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


def as_labels(pairs: list[tuple[str, float]]) -> list[LabelScore]:
    return [LabelScore(label=label, score=score) for label, score in pairs]
