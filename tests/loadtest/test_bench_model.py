"""The model-level benchmark's worker: both implementations on one checkpoint, with their FLOPs and peak share."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.bench_model import _peak_text, _worker
from loadtest.workers import make_checkpoint
from model_core.presets import preset_config

IMPLS = ("ours", "transformers")


@pytest.mark.slow
def test_fill_mask_counts_what_each_implementation_computes(tmp_path: Path) -> None:
    """transformers pads to 2048 positions and decodes them all; ours runs the length bucket and decodes the
    masked positions: fewer FLOPs for the same answer, each a share of the same measured peak."""
    folder = make_checkpoint(preset_config("language-perceiver-tiny", max_position_embeddings=2048), tmp_path / "mlm")
    ours, theirs = (
        _worker("fill-mask", impl, "float32", 2, folder, 1, 1, flops=True) for impl in ("ours", "transformers")
    )
    for result in (ours, theirs):
        assert result["latency_s"] > 0 and result["gflop"] > 0 and result["peak_gflop_s"] > 0
        assert result["fraction_of_peak"] == pytest.approx(
            result["gflop"] / result["latency_s"] / result["peak_gflop_s"]
        )
    assert ours["gflop"] < theirs["gflop"] / 4
    assert "fraction_of_peak" not in _worker("fill-mask", "ours", "float32", 1, folder, 1, 1)
    row = {f"{impl}_{k}": r[k] for impl, r in (("ours", ours), ("transformers", theirs)) for k in r}
    assert "GFLOP" in _peak_text(row) and _peak_text({}) == ""
