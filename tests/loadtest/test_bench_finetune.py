"""The stage-1 benchmark runs both modes through the fine-tuning code and reports them side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bench_finetune import texts

REPO = Path(__file__).resolve().parents[2]


def test_texts_are_mixed_lengths_within_the_bound() -> None:
    sizes = [len(t.encode()) for t in texts(50, 100, seed=1)]
    assert min(sizes) >= 50 and max(sizes) <= 100 and len(set(sizes)) > 10
    assert texts(5, 100, seed=1) == texts(5, 100, seed=1)


def test_both_modes_train_alike_and_are_reported_per_1000_examples(tmp_path: Path) -> None:
    out = tmp_path / "finetune.json"
    args = ["--preset", "language-perceiver-tiny", "--examples", "12", "--epochs", "2", "--at-epochs", "2,5"]
    command = [
        sys.executable,
        "-m",
        "loadtest.bench_finetune",
        *args,
        "--checkpoints",
        str(tmp_path),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [(r["epochs"], r["measured"]) for r in result["rows"]] == [(2, True), (5, False)]
    cached, recomputed = result["runs"]["cached"], result["runs"]["recomputed"]
    assert len(cached["losses"]) == 2 and result["loss_difference"] < 1e-4
    row = result["rows"][0]
    assert row["cached_s"] == pytest.approx((cached["encode_s"] + 2 * cached["epoch_s"]) * 1000 / 12)
    assert row["recomputed_s"] == pytest.approx(2 * recomputed["epoch_s"] * 1000 / 12)
    assert row["ratio"] == pytest.approx(row["recomputed_s"] / row["cached_s"]) and result["machine"]["cpu"]
    assert "per 1,000 examples" in done.stdout
