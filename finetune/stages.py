"""One training stage: some parameters trained for some epochs on shuffled mini-batches, the held-out set
scored after every epoch, the best epoch's weights kept, early stopping when it stops improving.

A stage knows nothing of what its logits cost: stage 1 decodes cached latents (or re-encodes, to
compare), stage 2 runs the whole model. It only asks for the logits of a batch of training examples
(with gradients) and of the whole eval set (without).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from finetune.optim import Decay, adamw, loss_of, schedule, step


@dataclass(frozen=True, kw_only=True)
class Hyper:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # of the stage's steps
    decay: Decay = "cosine"
    max_grad_norm: float = 1.0  # 0: no clipping
    patience: int = 5  # epochs without a better eval score before stopping; 0: never stop early


@dataclass(frozen=True)
class EpochRecord:
    stage: str
    epoch: int  # 0: before the stage's first update
    train_loss: float | None  # mean over the epoch's batches
    eval_loss: float | None
    eval_accuracy: float | None
    seconds: float  # the epoch's training, evaluation excluded


@dataclass
class Stage:
    name: str
    module: nn.Module  # switched between train and eval mode
    params: dict[str, nn.Parameter]  # what the stage trains (and snapshots when the eval score improves)
    train_logits: Callable[[torch.Tensor], torch.Tensor]  # training example indices (B,) -> logits (B, C)
    eval_logits: Callable[[], torch.Tensor] | None  # -> logits (N_eval, C); None: no held-out set
    hyper: Hyper


@dataclass
class StageResult:
    name: str
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return max((r.epoch for r in self.history), default=0)


class _Best:
    """The best eval score so far, (accuracy, -loss), and a copy of the trained parameters at it."""

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        self.params, self.score, self.epoch = params, (-math.inf, -math.inf), 0
        self.saved: dict[str, torch.Tensor] = {}

    def offer(self, epoch: int, accuracy: float, loss: float) -> bool:
        if (accuracy, -loss) <= self.score:
            return False
        self.score, self.epoch = (accuracy, -loss), epoch
        self.saved = {name: p.detach().clone() for name, p in self.params.items()}
        return True

    def restore(self) -> None:
        with torch.no_grad():
            for name, value in self.saved.items():
                self.params[name].copy_(value)


def evaluate(stage: Stage, labels: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) of the eval set."""
    assert stage.eval_logits is not None
    stage.module.eval()
    with torch.no_grad():
        logits = stage.eval_logits().float().cpu()
    predicted = logits.argmax(dim=-1)
    return float(loss_of(logits, labels)), int((predicted == labels).sum()) / len(labels)


def fit(
    stage: Stage, labels: torch.Tensor, eval_labels: torch.Tensor | None, *, generator: torch.Generator, progress: bool
) -> StageResult:
    """Train `stage.params` (every other parameter of the module frozen) and leave the module at its best
    eval epoch (the last one without an eval set)."""
    hyper, result = stage.hyper, StageResult(stage.name)
    stage.module.requires_grad_(False)
    for p in stage.params.values():
        p.requires_grad_(True)
    batches = math.ceil(len(labels) / hyper.batch_size)
    total = hyper.epochs * batches
    optimizer = adamw(stage.params.values(), lr=hyper.lr, weight_decay=hyper.weight_decay)
    scheduler = schedule(optimizer, total=total, warmup=round(hyper.warmup_ratio * total), decay=hyper.decay)
    best = _Best(stage.params)

    def record(epoch: int, train_loss: float | None, seconds: float) -> str:
        eval_loss = accuracy = None
        if eval_labels is not None:
            eval_loss, accuracy = evaluate(stage, eval_labels)
            best.offer(epoch, accuracy, eval_loss)
        result.history.append(EpochRecord(stage.name, epoch, train_loss, eval_loss, accuracy, seconds))
        return "-" if accuracy is None else f"{accuracy:.4f}"

    eval_text = record(0, None, 0.0)
    with tqdm(total=total, desc=stage.name, unit="step", disable=not progress) as bar:
        for epoch in range(1, hyper.epochs + 1):
            stage.module.train()
            started, losses = time.perf_counter(), []
            for indices in torch.randperm(len(labels), generator=generator).split(hyper.batch_size):
                loss = loss_of(stage.train_logits(indices), labels[indices].to(_device(stage)))
                step(loss, optimizer, scheduler, max_grad_norm=hyper.max_grad_norm)
                losses.append(float(loss.detach()))
                bar.update()
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}", eval_acc=eval_text, refresh=False)
            seconds = time.perf_counter() - started
            result.train_seconds += seconds
            eval_text = record(epoch, sum(losses) / len(losses), seconds)
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}", eval_acc=eval_text, refresh=False)
            if eval_labels is not None and hyper.patience and epoch - best.epoch >= hyper.patience:
                result.stopped_early = epoch < hyper.epochs
                break
    if eval_labels is not None:
        best.restore()
        result.best_epoch = best.epoch
    else:
        result.best_epoch = result.epochs_run
    stage.module.eval()
    return result


def _device(stage: Stage) -> torch.device:
    return next(iter(stage.params.values())).device
