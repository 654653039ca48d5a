"""FLOPs per request as the server runs a route, and the machine's matmul peak they are compared with."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from loadtest.flops import matmul_peak, peak_fractions, route_flops
from loadtest.payloads import BUILDERS, ModelShapes, Payload
from loadtest.report import BATCHING, Row


def _payloads(route: str, table: dict[str, Any], count: int = 3) -> list[Payload]:
    return BUILDERS[route](np.random.default_rng(0), count, ModelShapes.from_source(table["source"]))


def _config(tiny_config: dict[str, Any], *names: str) -> dict[str, Any]:
    return {**tiny_config, "models": {n: tiny_config["models"][n] for n in names}}


def _row(concurrency: int, rps: float, *, variant: str = BATCHING) -> Row:
    return Row(
        variant=variant, route="/fill-mask", model="mlm", concurrency=concurrency, max_batch_size=4, max_queue=64,
        requests=100, ok=100, elapsed_s=100 / rps, rps=rps, p50_ms=10.0, p95_ms=12.0, p99_ms=13.0, p99_over_p50=1.3,
        error_rate=0.0, n_429=0, n_other_errors=0, mean_batch_size=2.0, batches=50, server_cpu_ms_per_request=1.0,
    )  # fmt: skip


def test_cpu_fused_attention_is_counted_as_two_matmuls() -> None:
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    mask = torch.ones(2, 1, 5, 7, dtype=torch.bool)
    import loadtest.flops  # noqa: F401  (registers the CPU kernel's formula)

    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert counter.get_total_flops() == 2 * (2 * 2 * 4 * 5 * 7 * 8)


def test_matmul_peak_is_the_fastest_square_matmul() -> None:
    peak = matmul_peak(torch.float32, 1, sizes=(128, 256), repeats=3)
    assert 1e8 < peak < 1e13  # FLOP/s of one core: somewhere between a slow emulator and a GPU


def test_fill_mask_request_costs_what_its_forward_costs_at_batch_one(tiny_config: dict[str, Any]) -> None:
    """The route's count is the model's own forward on the request's padded ids and mask positions: nothing
    missed (every pass of the request), nothing added (warm-up and other requests not counted)."""
    from model_core import load_pretrained
    from server.tasks.fill_mask import FillMaskRunner

    config = _config(tiny_config, "mlm")
    payloads = _payloads("/fill-mask", config["models"]["mlm"], count=2)
    counted = route_flops(config, "/fill-mask", payloads, requests=2)

    model = load_pretrained(config["models"]["mlm"]["source"], device=torch.device("cpu"), dtype=torch.float32)
    runner = FillMaskRunner(model, device=torch.device("cpu"))
    expected = []
    for payload in payloads:
        batch = runner.collate([runner.prepare(payload.json["inputs"], max_masks=64)])
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            runner.forward(batch)
        expected.append(counter.get_total_flops())
    assert expected[0] > 0
    assert counted == pytest.approx(sum(expected) / 2)


def test_every_task_route_has_a_cost(tiny_config: dict[str, Any]) -> None:
    names = {
        "/classify-text": "sentiment",
        "/classify-image": "conv",
        "/optical-flow": "flow",
        "/autoencode-video": "video",
    }
    for route, name in names.items():
        config = _config(tiny_config, name)
        assert route_flops(config, route, _payloads(route, config["models"][name]), requests=1) > 0, route


def test_flow_costs_grow_with_the_tiles(tiny_config: dict[str, Any]) -> None:
    """A 1.25x frame pair is cut into 4 tiles of the model's size: 4 times the FLOPs of a one-tile pair."""
    config = _config(tiny_config, "flow")
    one, four = _payloads("/optical-flow", config["models"]["flow"], count=2)  # sizes alternate: tile, 1.25x
    assert route_flops(config, "/optical-flow", [four], requests=1) == 4 * route_flops(
        config, "/optical-flow", [one], requests=1
    )


def test_fraction_of_peak_is_throughput_times_cost_over_peak(tiny_config: dict[str, Any]) -> None:
    config = _config(tiny_config, "mlm")
    payloads = {"/fill-mask": _payloads("/fill-mask", config["models"]["mlm"])}
    rows = [_row(1, 50.0), _row(4, 120.0), _row(4, 500.0, variant="no-batching")]
    found = peak_fractions(config, payloads, rows, variant=BATCHING)
    route = found["routes"]["/fill-mask"]
    assert found["dtype"] == "float32" and found["threads"] >= 1 and found["peak_gflop_s"] > 0
    assert route["concurrency"] == 4 and route["saturation_rps"] == pytest.approx(120.0)
    assert route["fraction_of_peak"] == pytest.approx(120.0 * route["gflop_per_request"] / found["peak_gflop_s"])
