from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.engine.loading import load_model
from server.errors import ErrorCode, ServeError
from server.settings import ModelSpec, Settings, Task
from server.tasks.fill_mask import FillMaskRunner

# 33..64 tokens each: one length bucket (64), different lengths and mask counts.
TEXTS = [
    "Hello [MASK]orld, how are you doing today?",
    "The capital of France is[MASK][MASK][MASK][MASK][MASK][MASK].",
    "[MASK] is the first byte of this long sentence",
    "a[MASK]b[MASK][MASK]c and then some more text here",
    "ünïcode [MASK] text, with a few more words in it",
]


MASKS = 256  # max_masks_per_text


@pytest.fixture(scope="module")
def runner(checkpoints: dict[str, Path]) -> FillMaskRunner:
    spec = ModelSpec(name="mlm", task=Task.FILL_MASK, source=str(checkpoints["mlm"]))
    return load_model(spec, Settings()).runner


def run(runner: FillMaskRunner, items: list) -> list:
    with torch.inference_mode():
        return runner.split(runner.forward(runner.collate(items)), items)


def test_prepare_finds_masks_and_refuses_text_without_one(runner: FillMaskRunner) -> None:
    item = runner.prepare("a[MASK]b[MASK][MASK]c", max_masks=MASKS)
    assert item.positions == (2, 4, 5) and runner.top_k(None) == 5  # [CLS] a [MASK] b [MASK] [MASK] c [SEP]
    assert runner.top_k(1000) == 262  # at most the vocabulary
    with pytest.raises(ServeError) as info:
        runner.prepare("no mask here", max_masks=MASKS)
    assert info.value.code is ErrorCode.INVALID_INPUT and "[MASK]" in info.value.message


def test_too_long_input_is_refused(runner: FillMaskRunner) -> None:
    with pytest.raises(ServeError) as info:
        runner.prepare("x" * 300 + "[MASK]", max_masks=MASKS)
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE and "256" in info.value.message


def test_output_is_identical_alone_and_in_a_batch(runner: FillMaskRunner) -> None:
    items = [runner.prepare(t, max_masks=MASKS) for t in TEXTS]
    assert len({runner.key(i) for i in items}) == 1  # one bucket, so they can share a batch
    together = [runner.respond(i, logits, top_k=4) for i, logits in zip(items, run(runner, items), strict=True)]
    alone = [runner.respond(i, run(runner, [i])[0], top_k=4) for i in items]
    assert together == alone


def test_response_shape(runner: FillMaskRunner) -> None:
    one = runner.prepare("Hello [MASK]orld", max_masks=MASKS)
    [result] = run(runner, [one])
    answer = runner.respond(one, result, top_k=3)
    assert len(answer) == 3 and all(c["sequence"].startswith("Hello ") for c in answer)
    assert answer[0]["score"] >= answer[1]["score"] >= answer[2]["score"]
    assert answer[0]["run"]["start"] == 6 and answer[0]["run"]["end"] == 12

    several = runner.prepare("a[MASK]b[MASK][MASK]c", max_masks=MASKS)
    [result] = run(runner, [several])
    per_mask = runner.respond(several, result, top_k=2)
    assert len(per_mask) == 3 and all(len(c) == 2 for c in per_mask)
    first_run, second_run = per_mask[0][0]["run"], per_mask[1][0]["run"]
    assert (first_run["start"], first_run["end"]) == (1, 7)
    assert per_mask[2][0]["run"] == second_run and (second_run["start"], second_run["end"]) == (8, 20)
    assert len(first_run["fill"]) == 1 and per_mask[0][0]["token_str"] in first_run["fill"]
    text = "a[MASK]b[MASK][MASK]c"  # a run's filled text, from its offsets
    assert text[: second_run["start"]] + "##" + text[second_run["end"] :] == "a[MASK]b##c"
    assert per_mask[1][0]["sequence"].count("[MASK]") == 2  # only this mask is filled


def test_token_ids_and_logits(runner: FillMaskRunner) -> None:
    text = "a[MASK]b[MASK][MASK]c"
    by_text = runner.prepare(text, max_masks=MASKS)
    by_ids = runner.prepare_ids(runner.codec.encode(text), max_masks=MASKS)
    assert by_ids.positions == by_text.positions and by_ids.ids == by_text.ids
    first, logits = run(runner, [by_text, by_ids])
    assert logits.shape == (3, 262) and torch.allclose(first, logits, rtol=0, atol=1e-6)  # (P, V): masked only
    top, scores = logits.softmax(-1).topk(3, dim=-1), runner.scores(logits, 3)
    assert top.indices.tolist() == scores.tokens and torch.allclose(top.values, torch.tensor(scores.scores))


@pytest.mark.parametrize(
    "ids, code",
    [
        ([4, 70, 5], ErrorCode.INVALID_INPUT),  # no [MASK] (id 3)
        ([4, 3, 262, 5], ErrorCode.INVALID_INPUT),  # outside the vocabulary
        ([4, 3, -1, 5], ErrorCode.INVALID_INPUT),
        ([], ErrorCode.INVALID_INPUT),
        ([4, 3, *[70] * 300, 5], ErrorCode.PAYLOAD_TOO_LARGE),
    ],
)
def test_bad_token_ids_are_refused(runner: FillMaskRunner, ids: list[int], code: ErrorCode) -> None:
    with pytest.raises(ServeError) as info:
        runner.prepare_ids(ids, max_masks=MASKS)
    assert info.value.code is code


def test_targets_are_ranked_by_the_product_of_their_bytes_probabilities(runner: FillMaskRunner) -> None:
    text = "a[MASK]b and [MASK][MASK][MASK]"
    targets = ["xyz", "o", "abc", "q", "é", "abc"]  # "é" is two bytes: it fits neither run; "abc" twice counts once
    item = runner.prepare(text, max_masks=MASKS)
    runner.check_targets(item, targets)
    (logits,) = run(runner, [item])  # (P, V): one decode for every mask
    probabilities = logits.float().softmax(dim=-1)
    one, three = runner.respond_targets(item, logits, targets, top_k=5)  # two runs: a list per run
    assert sorted(c["token_str"] for c in one) == ["o", "q"]
    assert sorted(c["token_str"] for c in three) == ["abc", "xyz"]
    for candidate in one + three:
        rows = [0] if candidate in one else [1, 2, 3]
        ids = [b + 6 for b in candidate["token_str"].encode()]  # byte b is token b + 6
        expected = float(torch.prod(probabilities[rows, ids]))
        assert candidate["score"] == pytest.approx(expected, rel=1e-5) and candidate["token"] == ids[0]
    assert [c["score"] for c in three] == sorted((c["score"] for c in three), reverse=True)
    best = three[0]
    assert best["sequence"] == "a[MASK]b and " + best["token_str"]  # the run filled, the other mask kept
    assert text[best["run"]["start"] : best["run"]["end"]] == "[MASK]" * 3 and best["run"]["fill"] == best["token_str"]
    assert len(runner.respond_targets(item, logits, targets, top_k=1)[1]) == 1
    single = runner.prepare("a[MASK]b", max_masks=MASKS)
    flat = runner.respond_targets(single, run(runner, [single])[0], ["o", "q"], top_k=5)
    assert [type(c) for c in flat] == [dict, dict]  # one run: a flat list, as HF answers one mask


def test_a_run_no_target_fits_is_refused_before_the_model(runner: FillMaskRunner) -> None:
    item = runner.prepare("a[MASK][MASK]b", max_masks=MASKS)
    with pytest.raises(ServeError) as info:
        runner.check_targets(item, ["x", "xyz", "é!"])  # 1, 3 and 3 bytes; the run is 2
    assert info.value.code is ErrorCode.INVALID_INPUT and "run of 2 [MASK]s" in info.value.message
