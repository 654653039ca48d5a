"""How good a classifier is on a labelled set: accuracy, macro-F1 and the confusion matrix, as numbers
and as the text the report shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LabelScores:
    """One label's scores, one-vs-rest."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int  # examples whose true label this is


@dataclass(frozen=True)
class Scores:
    """A classifier's scores on one labelled set."""

    accuracy: float
    macro_f1: float
    per_label: list[LabelScores]
    confusion: list[list[int]]  # [true][predicted]
    count: int


def confusion_matrix(predicted: torch.Tensor, true: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(num_labels, num_labels) counts, rows the true label, columns the predicted one."""
    flat = true.long() * num_labels + predicted.long()
    return torch.bincount(flat, minlength=num_labels * num_labels).view(num_labels, num_labels)


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0  # no prediction / no example of a label: 0, as scikit-learn's default


def scores(predicted: torch.Tensor, true: torch.Tensor, labels: Sequence[str]) -> Scores:
    """Scores of predicted class indices (N,) against true ones (N,). Macro-F1 is the unweighted mean over
    every label, those the set lacks included (their F1 is 0 if predicted, else they count 0 too)."""
    matrix = confusion_matrix(predicted, true, len(labels))
    per_label = []
    for i, label in enumerate(labels):
        hits, predicted_i, support = int(matrix[i, i]), int(matrix[:, i].sum()), int(matrix[i].sum())
        precision, recall = _ratio(hits, predicted_i), _ratio(hits, support)
        f1 = _ratio(2 * hits, predicted_i + support)
        per_label.append(LabelScores(label, precision, recall, f1, support))
    count = int(matrix.sum())
    return Scores(
        accuracy=_ratio(int(matrix.trace()), count),
        macro_f1=sum(s.f1 for s in per_label) / len(per_label),
        per_label=per_label,
        confusion=matrix.tolist(),
        count=count,
    )


def scores_text(result: Scores) -> str:
    """Per-label precision, recall, F1 and support, then the confusion matrix, aligned for a terminal."""
    names = [s.label for s in result.per_label]
    width = max(len("macro"), *(len(n) for n in names))
    lines = [f"{'':{width}}  precision  recall     f1  support"]
    for s in result.per_label:
        lines.append(f"{s.label:{width}}  {s.precision:9.4f}  {s.recall:6.4f}  {s.f1:.4f}  {s.support:7d}")
    lines.append(f"{'macro':{width}}  {'':9}  {'':6}  {result.macro_f1:.4f}  {result.count:7d}")
    lines += ["", "confusion matrix (rows: true label, columns: predicted)"]
    cell = max(width, *(len(str(v)) for row in result.confusion for v in row))
    lines.append(" ".join([f"{'':{width}}", *(f"{n:>{cell}}" for n in names)]))
    for name, row in zip(names, result.confusion, strict=True):
        lines.append(" ".join([f"{name:{width}}", *(f"{v:>{cell}d}" for v in row)]))
    return "\n".join(lines)
