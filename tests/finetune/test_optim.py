"""The optimiser's pieces: the schedule's shape, which parameters decay, clipping."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from finetune.optim import adamw, loss_of, lr_factor, schedule, step


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_warm_up_then_decay_to_zero(decay: str) -> None:
    factors = [lr_factor(s, total=100, warmup=10, decay=decay) for s in range(100)]  # type: ignore[arg-type]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == 1.0 and all(a >= b for a, b in itertools.pairwise(factors[10:]))
    middle = 0.5 if decay == "linear" else 0.5 * (1 + math.cos(math.pi * 0.5))
    assert factors[55] == pytest.approx(middle)
    assert lr_factor(100, total=100, warmup=10, decay=decay) == pytest.approx(0.0, abs=1e-12)  # type: ignore[arg-type]


def test_no_warm_up() -> None:
    assert lr_factor(0, total=10, warmup=0, decay="cosine") == 1.0


def test_biases_and_norms_are_not_decayed() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    optimizer = adamw(model.parameters(), lr=0.1, weight_decay=0.5)
    decayed, plain = optimizer.param_groups
    assert [p.shape for p in decayed["params"]] == [torch.Size([4, 3])] and decayed["weight_decay"] == 0.5
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0


def test_step_clips_the_global_norm_and_advances_the_schedule() -> None:
    weight = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scheduler = schedule(optimizer, total=4, warmup=2, decay="linear")
    norm = step((weight * torch.tensor([30.0, 40.0])).sum(), optimizer, scheduler, max_grad_norm=1.0)
    assert norm == pytest.approx(50.0)
    assert weight.detach().tolist() == pytest.approx([-0.5 * 0.6, -0.5 * 0.8])  # lr 0.5 (warm-up), |grad| 1
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)
    step((weight * torch.tensor([3.0, 4.0])).sum(), optimizer, scheduler, max_grad_norm=0)  # unclipped
    assert weight.detach().tolist() == pytest.approx([-0.3 - 3.0, -0.4 - 4.0])


def test_the_loss_is_float32_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.bfloat16)
    loss = loss_of(logits, torch.tensor([0, 0]))
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(expected, rel=1e-3)
