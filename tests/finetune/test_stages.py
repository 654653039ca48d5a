"""The stage loop with scripted eval scores: early stopping, and the best epoch's weights restored."""

from __future__ import annotations

import torch
from torch import nn

from finetune.stages import Hyper, Stage, fit

ACCURACIES = [0.5, 0.6, 0.9, 0.7, 0.8, 0.6, 0.95]  # eval accuracy after epochs 0 (before training) .. 6
EVAL_LABELS = torch.zeros(20, dtype=torch.long)


def scripted(patience: int) -> tuple[Stage, list[torch.Tensor]]:
    """A linear model trained for real; its eval scores follow ACCURACIES; `seen` gets its weight at each eval."""
    torch.manual_seed(0)
    module, inputs, seen = nn.Linear(2, 2), torch.randn(8, 2), []

    def eval_logits() -> torch.Tensor:
        seen.append(module.weight.detach().clone())
        right = round(ACCURACIES[len(seen) - 1] * len(EVAL_LABELS))
        return torch.tensor([[1.0, 0.0]] * right + [[0.0, 1.0]] * (len(EVAL_LABELS) - right))

    stage = Stage(
        name="toy",
        module=module,
        params=dict(module.named_parameters()),
        train_logits=lambda indices: module(inputs[indices]),
        eval_logits=eval_logits,
        hyper=Hyper(epochs=6, batch_size=4, lr=0.1, warmup_ratio=0.0, patience=patience),
    )
    return stage, seen


def test_stops_after_patience_epochs_without_a_better_score_and_restores_the_best() -> None:
    stage, seen = scripted(patience=2)
    result = fit(
        stage, torch.tensor([0, 1] * 4), EVAL_LABELS, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert (result.epochs_run, result.best_epoch, result.stopped_early) == (4, 2, True)
    assert [r.eval_accuracy for r in result.history] == [0.5, 0.6, 0.9, 0.7, 0.8]
    assert not torch.equal(seen[2], seen[4]) and torch.equal(stage.module.weight, seen[2])
    assert all(not p.requires_grad or name in stage.params for name, p in stage.module.named_parameters())


def test_patience_zero_trains_every_epoch() -> None:
    stage, seen = scripted(patience=0)
    result = fit(
        stage, torch.tensor([0, 1] * 4), EVAL_LABELS, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert (result.epochs_run, result.best_epoch, result.stopped_early) == (6, 6, False)
    assert torch.equal(stage.module.weight, seen[6]) and len(result.history) == 7
    assert all(r.train_loss is not None and r.seconds > 0 for r in result.history[1:])
