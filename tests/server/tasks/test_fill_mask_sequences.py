"""Each fill-mask candidate's `sequence` is the input with exactly that [MASK] replaced by its byte."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.engine.loading import load_model
from server.settings import ModelSpec, Settings, Task
from server.tasks.fill_mask import MASK, FillMaskRunner

TEXTS = ["a[MASK]b[MASK][MASK]c", "ünï[MASK]code [MASK] tëxt", "[MASK]", "[MASK][MASK] at the start and end [MASK]"]


@pytest.fixture(scope="module")
def runner(checkpoints: dict[str, Path]) -> FillMaskRunner:
    spec = ModelSpec(name="mlm", task=Task.FILL_MASK, source=str(checkpoints["mlm"]))
    return load_model(spec, Settings()).runner


def expected(text: str, j: int, fill: bytes) -> str:
    parts = text.split(MASK)
    out = MASK.join(parts[: j + 1]).encode() + fill + MASK.join(parts[j + 1 :]).encode()
    return out.decode("utf-8", errors="replace")


@pytest.mark.parametrize("text", TEXTS)
def test_candidate_sequences(runner: FillMaskRunner, text: str) -> None:
    item = runner.prepare(text, max_masks=256)
    with torch.inference_mode():
        [result] = runner.split(runner.forward(runner.collate([item])), [item])
    assert result.shape == (text.count(MASK), runner.vocab_size)
    answer = runner.respond(item, result, top_k=4)
    per_mask = [answer] if text.count(MASK) == 1 else answer
    assert len(per_mask) == text.count(MASK)
    for j, candidates in enumerate(per_mask):
        for c in candidates:
            token = c["token"]
            fill = bytes([token - runner.byte_offset]) if token >= runner.byte_offset else c["token_str"].encode()
            assert c["sequence"] == expected(text, j, fill)
