"""The route benchmark's workers at the tiny test configs: one request each, both implementations agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loadtest.bench_routes import agreement, compare, run_ours
from loadtest.hf_routes import colab_grid, colab_patches, run_transformers
from loadtest.route_cases import Case

TIMINGS = {"concurrency", "requests", "p50_s", "mean_s", "requests_per_s"}
FLOW_SIZE = (80, 120)  # 3 x 3 tiles of 48 x 64, a size where the colab's grid stays inside the frame


def case(tiny_models: dict[str, dict[str, Any]], task: str, **options: Any) -> Case:
    model = "flow" if task == "flow" else "video"
    return Case(task, tiny_models[model]["source"], requests=1, threads=torch.get_num_threads(), **options)


def check_metrics(metrics: dict[str, Any], concurrency: tuple[int, ...]) -> None:
    assert [run["concurrency"] for run in metrics["runs"]] == list(concurrency)
    for run in metrics["runs"]:
        assert set(run) >= TIMINGS and run["requests"] == 1
        assert run["p50_s"] > 0 and run["requests_per_s"] > 0
    assert metrics["peak_rss_mb"] > 0 and metrics["peak_delta_mb"] >= 0
    assert metrics["threads"] == torch.get_num_threads()


def test_colab_grid_is_our_tile_grid_where_it_fits() -> None:
    from model_core.flow_tiling import tile_grid

    for size, tile in [((436, 1024), (368, 496)), (FLOW_SIZE, (48, 64))]:
        assert sorted(colab_grid(size, tile)) == tile_grid(*size, tile=tile)
    with pytest.raises(ValueError, match="outside a 100x60 frame"):
        colab_grid((60, 100), (48, 64))  # its second row would start at 28 and end at 76


def test_colab_patches_are_our_patches() -> None:
    from model_core.flow_processing import extract_patches

    frames = torch.randn(2, 3, 7, 9)
    assert torch.equal(colab_patches(frames), extract_patches(frames))


def test_flow_route_and_colab_loop_agree(tiny_models: dict[str, dict[str, Any]]) -> None:
    flow = case(tiny_models, "flow", concurrency=(1, 2), flow_size=FLOW_SIZE)
    ours, ours_out = run_ours(flow)
    theirs, theirs_out = run_transformers(flow)
    check_metrics(ours, (1, 2))
    check_metrics(theirs, (1,))
    assert theirs["tiles"] == 9
    assert ours_out["flow"].shape == theirs_out["flow"].shape == (*FLOW_SIZE, 2)
    agree = agreement("flow", ours_out, theirs_out)
    assert agree["flow_max_abs_px"] > 0
    assert agree["flow_max_abs_diff_px"] <= 1e-4 * agree["flow_max_abs_px"]


def test_flow_route_cost_is_nine_tiles(tiny_models: dict[str, dict[str, Any]]) -> None:
    """With --flops: one more request counted, nine times a one-tile pair's FLOPs, and a fraction of peak."""
    from loadtest.bench_routes import _row
    from loadtest.flops import route_flops
    from loadtest.payloads import BUILDERS, ModelShapes

    flow = case(tiny_models, "flow", flow_size=FLOW_SIZE, flops=True)
    ours, _ = run_ours(flow)
    table = tiny_models["flow"]
    one_tile = BUILDERS["/optical-flow"](np.random.default_rng(0), 1, ModelShapes.from_source(table["source"]))
    config = {"server": {"device": "cpu"}, "models": {"flow": table}}
    assert ours["gflop_per_request"] == pytest.approx(9 * route_flops(config, "/optical-flow", one_tile) / 1e9)
    [row] = _row(flow, ours, {"runs": [{"p50_s": 1.0, "requests_per_s": 1.0}]}, {})
    assert 0 < row["ours_fraction_of_peak"] < 1
    assert row["ours_fraction_of_peak"] == pytest.approx(
        ours["runs"][0]["requests_per_s"] * ours["gflop_per_request"] / ours["peak_gflop_s"]
    )


def test_reconstruction_agrees_on_the_chunks_measured(tiny_models: dict[str, dict[str, Any]]) -> None:
    recon = case(tiny_models, "video-recon", hf_chunks=3)
    ours, ours_out = run_ours(recon)
    theirs, theirs_out = run_transformers(recon)
    check_metrics(ours, (1,))
    check_metrics(theirs, (1,))
    [run] = theirs["runs"]
    assert run["extrapolated_from_chunks"] == 3 and run["chunks_total"] == 16  # 2 x 16 x 16 pixels, 16 patches
    assert ours_out["video"].shape == (2, 16, 16, 3) and ours_out["audio"].shape == (64,)
    assert theirs_out["image"].shape == (3 * 32, 3) and theirs_out["audio"].shape == (3 * 4,)
    agree = agreement("video-recon", ours_out, theirs_out)
    assert agree["chunks_compared_image_points"] == 96
    assert agree["video_max_abs_diff_levels"] <= 1 and agree["audio_max_abs_diff"] < 1e-5


def test_labels_compared_in_worker_processes(tiny_models: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    [row] = compare(case(tiny_models, "video-labels"), tmp_path)
    assert row["note"] == "", row["note"]
    assert row["agreement"]["top1_equal"] is True and row["agreement"]["top1_score_abs_diff"] < 1e-5
    for key in (
        "ours_p50_s",
        "transformers_p50_s",
        "ours_requests_per_s",
        "transformers_requests_per_s",
        "latency_ratio",
        "throughput_ratio",
        "ours_peak_rss_mb",
        "transformers_peak_rss_mb",
    ):
        assert np.isfinite(row[key]) and row[key] > 0, key
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "video-labels-float32-ours.npz",
        "video-labels-float32-transformers.npz",
    ]
