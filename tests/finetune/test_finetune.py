"""Fine-tuning end to end on a synthetic task, from a small masked LM with random weights: accuracy, the
folder transformers reads, the two stages, the latent cache against recomputing, the report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from finetune import Options, Report, finetune
from model_core import load_pretrained
from model_core.checkpoint import read_state_dict
from model_core.tokenizer import ByteTokenizer
from tests.finetune.synthetic import marker_texts, random_base, write_jsonl


@dataclass(frozen=True)
class Trained:
    base: Path
    out: Path
    report: Report


def accuracy(folder: Path, rows: list[dict[str, str]]) -> float:
    """The saved classifier's accuracy, loaded as the server loads it."""
    model = load_pretrained(folder)
    tokenizer = ByteTokenizer()
    ids, mask = tokenizer.pad([tokenizer.encode(r["text"]) for r in rows])
    with torch.inference_mode():
        predicted = model(ids, attention_mask=mask).logits.argmax(dim=-1).tolist()
    return sum(model.config.labels[p] == r["label"] for p, r in zip(predicted, rows, strict=True)) / len(rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Stage 1 alone (the encoder frozen at its random weights) on 800 marker texts, 200 to select the epoch."""
    root = tmp_path_factory.mktemp("finetune")
    base = random_base(root / "base", "language-perceiver-small", seed=0)
    options = Options(
        base=str(base),
        train=write_jsonl(root / "train.jsonl", marker_texts(800, seed=1)),
        eval=write_jsonl(root / "eval.jsonl", marker_texts(200, seed=2)),
        out=root / "classifier",
        epochs=30,
        lr=3e-3,
        seed=0,
        progress=False,
    )
    return Trained(base, options.out, finetune(options))


def test_stage_one_takes_held_out_accuracy_from_chance_to_95_percent(trained: Trained) -> None:
    start = trained.report.history[0]
    assert start.epoch == 0 and 0.4 <= (start.eval_accuracy or 0) <= 0.6  # a fresh decoder: chance on 2 labels
    assert trained.report.scores.accuracy >= 0.95  # the selection set
    assert accuracy(trained.out, marker_texts(400, seed=3)) >= 0.95  # texts no part of the run has seen
    frozen = read_state_dict(trained.base)
    tuned = read_state_dict(trained.out)
    encoder = [k for k in tuned if not k.startswith("perceiver.decoder.")]
    assert all(torch.equal(tuned[k], frozen[k]) for k in encoder)  # stage 1 leaves the encoder as it was


def test_transformers_loads_the_folder_and_gives_the_same_logits(trained: Trained) -> None:
    import transformers

    theirs = transformers.PerceiverForSequenceClassification.from_pretrained(trained.out).eval()
    ours = load_pretrained(trained.out)
    assert theirs.config.id2label == {0: "negative", 1: "positive"} and theirs.config.num_labels == 2
    assert theirs.config.problem_type == "single_label_classification"
    tokenizer = ByteTokenizer()
    ids, mask = tokenizer.pad([tokenizer.encode(r["text"]) for r in marker_texts(6, seed=5)])
    with torch.inference_mode():
        expected = theirs(inputs=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert got.shape == (6, 2) and torch.allclose(got, expected, atol=1e-5)


def test_the_report_is_saved_next_to_the_checkpoint(trained: Trained) -> None:
    assert sorted(p.name for p in trained.out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "report.json",
        "report.txt",
    ]
    saved = json.loads((trained.out / "report.json").read_text())
    assert saved["labels"] == ["negative", "positive"] and saved["scored_on"] == "eval"
    assert saved["scores"]["accuracy"] == trained.report.scores.accuracy
    assert saved["train"]["examples"] == 800 and saved["latents"] == "cached in memory"
    [stage] = saved["stages"]
    assert [r["epoch"] for r in stage["history"]] == list(range(trained.report.stages[0].epochs_run + 1))
    text = (trained.out / "report.txt").read_text()
    assert "confusion matrix (rows: true label, columns: predicted)" in text and "macro-F1" in text
    assert text.splitlines()[-1].split()[0] == "positive"


def small_run(root: Path, **options: object) -> tuple[Report, dict[str, torch.Tensor]]:
    """A few epochs from the tiny preset on 48 texts (16 held out): cheap enough to run in several ways."""
    base = root / "base"
    if not base.exists():
        random_base(base, "language-perceiver-tiny", seed=1)
        write_jsonl(root / "train.jsonl", marker_texts(48, seed=1))
        write_jsonl(root / "eval.jsonl", marker_texts(16, seed=2))
    out = root / f"out-{len(list(root.glob('out-*')))}"
    settings = dict(base=str(base), train=root / "train.jsonl", eval=root / "eval.jsonl", out=out, epochs=3)
    report = finetune(Options(**{**settings, "progress": False, **options}))  # type: ignore[arg-type]
    return report, read_state_dict(out)


def test_cached_latents_train_what_recomputed_ones_do(tmp_path: Path) -> None:
    cached, cached_state = small_run(tmp_path, batch_size=8, patience=0)
    recomputed, recomputed_state = small_run(tmp_path, batch_size=8, patience=0, cache_latents=False)
    on_disk, disk_state = small_run(tmp_path, batch_size=8, patience=0, cache_memory_mb=0, cache_dir=tmp_path)
    assert (cached.latents, recomputed.latents, on_disk.latents) == ("cached in memory", "recomputed", "cached on disk")
    assert not list(tmp_path.glob("perceiver-latents-*"))  # the file cache is gone
    for state in (recomputed_state, disk_state):
        assert all(torch.allclose(state[k], cached_state[k], atol=1e-5) for k in cached_state)
    losses = [[r.train_loss for r in run.history] for run in (cached, recomputed)]
    assert losses[0][1:] == pytest.approx(losses[1][1:], abs=1e-5)


def test_unfreezing_trains_the_encoder_as_stage_two(tmp_path: Path) -> None:
    report, state = small_run(tmp_path, eval=None, epochs=1, unfreeze=True, unfreeze_epochs=2, unfreeze_lr=1e-3)
    assert [s.name for s in report.stages] == ["stage 1 (frozen encoder)", "stage 2 (unfrozen)"]
    assert [(r.stage[:7], r.epoch) for r in report.history] == [("stage 1", 0), ("stage 1", 1)] + [
        ("stage 2", e) for e in range(3)
    ]
    base = read_state_dict(tmp_path / "base")
    key = "perceiver.encoder.self_attends.0.attention.self.query.weight"
    assert not torch.allclose(state[key], base[key])
    alone, _ = small_run(tmp_path, epochs=0, unfreeze=True, unfreeze_epochs=1, patience=0)  # stage 2 only
    assert [s.name for s in alone.stages] == ["stage 2 (unfrozen)"] and alone.latents == "-"


def test_without_eval_data_the_training_set_is_scored_and_said_so(tmp_path: Path) -> None:
    report, _ = small_run(tmp_path, eval=None, epochs=2)
    assert report.eval is None and report.scored_on == "train" and report.scores.count == 48
    assert all(r.eval_accuracy is None for r in report.history) and report.stages[0].best_epoch == 2
    assert "the TRAINING set (no --eval: not a held-out score)" in (tmp_path / "out-0" / "report.txt").read_text()


def test_long_texts_are_warned_about_before_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="finetune"):
        report, _ = small_run(tmp_path, max_length=30, epochs=1)
    assert report.max_length == 30 and report.train.truncated > 0
    [warning] = [r.getMessage() for r in caplog.records if "train.jsonl" in r.getMessage()]
    assert "longer than 30 bytes cut to the first 30 (lines " in warning
