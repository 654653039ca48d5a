"""Accuracy, macro-F1 and the confusion matrix against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from finetune.metrics import confusion_matrix, scores, scores_text


def test_scores_of_a_small_case() -> None:
    true = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])
    result = scores(predicted, true, ["a", "b", "c"])
    assert result.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert result.accuracy == pytest.approx(4 / 6) and result.count == 6
    a, b, c = result.per_label
    assert (a.precision, a.recall, a.f1, a.support) == pytest.approx((1.0, 2 / 3, 0.8, 3))
    assert (b.precision, b.recall, b.f1, b.support) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert (c.precision, c.recall, c.f1, c.support) == pytest.approx((0.5, 1.0, 2 / 3, 1))
    assert result.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_a_label_never_seen_nor_predicted_scores_zero() -> None:
    result = scores(torch.tensor([0, 1]), torch.tensor([0, 1]), ["a", "b", "unused"])
    assert result.accuracy == 1.0 and result.per_label[2].f1 == 0.0 and result.macro_f1 == pytest.approx(2 / 3)


def test_confusion_rows_are_true_labels() -> None:
    assert confusion_matrix(torch.tensor([1, 1]), torch.tensor([0, 0]), 2).tolist() == [[0, 2], [0, 0]]


def test_the_text_lists_labels_and_the_matrix() -> None:
    text = scores_text(scores(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), ["negative", "positive"]))
    lines = text.splitlines()
    assert lines[1].split() == ["negative", "1.0000", "0.5000", "0.6667", "2"]
    assert lines[-3].split() == ["negative", "positive"]
    assert lines[-2].split() == ["negative", "1", "1"] and lines[-1].split() == ["positive", "0", "1"]
