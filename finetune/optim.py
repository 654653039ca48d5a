"""The loss and the optimiser: cross-entropy, AdamW with a warm-up then cosine or linear decay, gradient
clipping. Training only: model_core has no loss in its inference path (transformers' classes carry
theirs in every forward).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

Decay = Literal["cosine", "linear"]
DECAYS: tuple[Decay, ...] = get_args(Decay)


def loss_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, C) against class indices (B,), in float32 whatever the autocast."""
    return F.cross_entropy(logits.float(), labels)


def adamw(params: Iterable[nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the parameters given; biases and LayerNorm scales (the 1-D parameters) are not decayed,
    as BERT-style fine-tuning leaves them."""
    decayed: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for p in params:
        (decayed if p.ndim >= 2 else plain).append(p)
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def lr_factor(step: int, *, total: int, warmup: int, decay: Decay) -> float:
    """The learning rate at `step` (0-based) as a fraction of the peak: linear warm-up over `warmup` steps,
    then down to 0 at `total`, along a half cosine or a line."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress


def schedule(
    optimizer: torch.optim.Optimizer, *, total: int, warmup: int, decay: Decay
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total=total, warmup=warmup, decay=decay)
    )


def step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    max_grad_norm: float,
) -> float:
    """One update: backward, clip the gradients' global norm to `max_grad_norm` (0: no clipping), step the
    optimiser and the schedule. Returns the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    optimizer.step()
    scheduler.step()
    return float(norm)
