from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.engine.loading import load_model
from server.settings import ModelSpec, Settings, Task
from server.tasks.text_classification import TextClassificationRunner


@pytest.fixture(scope="module")
def runner(checkpoints: dict[str, Path]) -> TextClassificationRunner:
    spec = ModelSpec(name="sentiment", task=Task.TEXT_CLASSIFICATION, source=str(checkpoints["sentiment"]))
    return load_model(spec, Settings()).runner


def run(runner: TextClassificationRunner, items: list) -> list:
    with torch.inference_mode():
        return runner.split(runner.forward(runner.collate(items)), items)


def test_labels_from_id2label_ranked(runner: TextClassificationRunner) -> None:
    [logits] = run(runner, [runner.prepare("I loved it")])
    labels = runner.respond(logits, top_k=None, function=None)
    assert sorted(label for label, _ in labels) == ["negative", "neutral", "positive"]
    scores = [s for _, s in labels]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5
    top = runner.respond(logits, top_k=1, function="none")
    assert len(top) == 1 and top[0][0] == labels[0][0] and top[0][1] == logits.max().item()


def test_output_is_identical_alone_and_in_a_batch(runner: TextClassificationRunner) -> None:
    texts = ["short one", "a slightly longer sentence", "é" * 6, "x"]
    items = [runner.prepare(t) for t in texts]
    together, alone = run(runner, items), [run(runner, [i])[0] for i in items]
    answer = lambda logits: runner.respond(logits, top_k=None, function=None)
    assert [answer(x) for x in together] == [answer(x) for x in alone]


def test_token_ids_and_logits(runner: TextClassificationRunner) -> None:
    by_text = runner.prepare("I loved it")
    by_ids = runner.prepare_ids(runner.codec.encode("I loved it"))
    assert by_ids.ids == by_text.ids
    first, second = run(runner, [by_text, by_ids])
    assert second.shape == (3,) and torch.allclose(first, second, rtol=0, atol=1e-6)
