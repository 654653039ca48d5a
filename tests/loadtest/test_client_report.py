"""The closed-loop client's bounds and counting, metrics deltas, and the report's ratios and checks."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections import Counter
from pathlib import Path

import httpx

from loadtest.client import TRANSPORT_ERROR, BatchStats, StepResult, run_step, scrape_batches
from loadtest.inprocess import InProcessResult
from loadtest.payloads import Payload
from loadtest.report import BATCHING, COLUMNS, NO_BATCHING, Row, knee, summarise, write

PAYLOADS = [Payload("/fill-mask", "t", json={"inputs": "a[MASK]"})]


def _client(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://127.0.0.1")


def test_step_counts_statuses_and_stops_at_the_request_budget() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        n = len(seen)
        if n % 5 == 0:
            return httpx.Response(429, json={"error": {"code": "overloaded", "message": "queue is full"}})
        if n % 7 == 0:
            raise httpx.ConnectError("refused")
        if n % 11 == 0:
            return httpx.Response(503, json={"error": {"message": "not ready"}})
        return httpx.Response(200, json=[], headers={"X-Batch-Size": "3"})

    async def go() -> StepResult:
        async with _client(handler) as client:
            return await run_step([client], "/fill-mask", PAYLOADS, concurrency=4, max_requests=40, duration_s=30)

    step = asyncio.run(go())
    assert step.requests == len(seen) == 40
    # 429 every 5th, no answer every 7th (35 is a 429), 503 every 11th; the rest succeed.
    assert step.overloaded == 8 and step.statuses[TRANSPORT_ERROR] == 4 and step.statuses[503] == 3
    assert step.other_errors == 7 and step.ok == 25 == len(step.latencies_s)
    assert step.batch_sizes == {3: 25}
    assert step.errors["429: queue is full"] == 8 and step.errors["503: not ready"] == 3
    assert json.loads(seen[0].content) == {"inputs": "a[MASK]"}


def test_each_worker_has_its_own_client() -> None:
    seen: Counter[int] = Counter()

    def counting(i: int):
        async def handler(request: httpx.Request) -> httpx.Response:
            seen[i] += 1
            await asyncio.sleep(0.001)
            return httpx.Response(200, json=[])

        return handler

    async def go() -> StepResult:
        clients = [_client(counting(i)) for i in range(3)]
        try:
            return await run_step(clients, "/fill-mask", PAYLOADS, concurrency=3, max_requests=30, duration_s=30)
        finally:
            for c in clients:
                await c.aclose()

    assert asyncio.run(go()).ok == 30
    assert set(seen) == {0, 1, 2} and sum(seen.values()) == 30


def test_step_stops_at_its_time_limit() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, json=[])

    async def go() -> StepResult:
        async with _client(slow) as client:
            return await run_step([client], "/fill-mask", PAYLOADS, concurrency=2, max_requests=10_000, duration_s=0.3)

    started = time.monotonic()
    step = asyncio.run(go())
    assert time.monotonic() - started < 1.0
    assert 6 <= step.requests <= 16 and step.ok == step.requests
    assert 0.3 <= step.elapsed_s < 1.0 and step.percentile(50) >= 0.05


def test_batch_stats_from_metrics() -> None:
    text = (
        "# TYPE perceiver_batch_size histogram\n"
        'perceiver_batch_size_bucket{le="+Inf",model="m"} 4.0\n'
        'perceiver_batch_size_count{model="m"} 4.0\nperceiver_batch_size_sum{model="m"} 10.0\n'
    )

    async def go() -> dict[str, BatchStats]:
        async with _client(lambda r: httpx.Response(200, text=text)) as client:
            return await scrape_batches(client)

    stats = asyncio.run(go())
    assert stats == {"m": BatchStats(4.0, 10.0)}
    assert (stats["m"] - BatchStats(2.0, 2.0)).mean == 4.0
    assert BatchStats().mean != BatchStats().mean  # NaN: no batches ran


def _row(
    variant: str,
    concurrency: int,
    rps: float,
    *,
    p50: float = 10.0,
    p99: float = 15.0,
    n_429: int = 0,
    other: int = 0,
    max_queue: int = 8,
) -> Row:
    return Row(
        variant,
        "/fill-mask",
        "m",
        concurrency,
        4,
        max_queue,
        100,
        100 - n_429 - other,
        1.0,
        rps,
        p50,
        p99,
        p99,
        p99 / p50,
        (n_429 + other) / 100,
        n_429,
        other,
        2.0,
        50,
        1.5,
    )


def test_summary_ratios_and_checks() -> None:
    rows = [
        _row(BATCHING, 1, 10),
        _row(BATCHING, 4, 30, p99=25),
        _row(BATCHING, 16, 40),
        _row(BATCHING, 64, 41, n_429=3),
        _row(NO_BATCHING, 1, 10),
        _row(NO_BATCHING, 4, 15),
        _row(NO_BATCHING, 16, 16),
        _row(NO_BATCHING, 64, 16, other=1, n_429=2, max_queue=64),
    ]
    model = InProcessResult("/fill-mask", "m", 4, 400, 8.0, 1.0, 7.0, 1)
    assert model.items_per_s == 50
    summary = summarise(rows, [model])
    route = summary["routes"]["/fill-mask"]
    assert route["saturation_rps"] == 41 and route["saturation_concurrency"] == 64
    assert route["knee_concurrency"] == 16 == knee([r for r in rows if r.variant == BATCHING])
    assert route["max_p99_over_p50_below_knee"] == 2.5
    assert route["batching_speedup"] == {"1": 1.0, "4": 2.0, "16": 2.5, "64": 41 / 16}
    assert route["batching_cpu_saving"] == {"1": 1.0, "4": 1.0, "16": 1.0, "64": 1.0}
    assert route["server_efficiency"] == 41 / 50
    # 429s past the queue (64 clients, queue 8) are load shedding; within it (64 <= 64) they are a fault.
    assert summary["checks"] == {
        "non_429_errors": 1,
        "n_429": 5,
        "429_within_queue_limit": ["no-batching /fill-mask c=64"],
    }


def test_write_csv_json_and_plots(tmp_path: Path) -> None:
    rows = [_row(BATCHING, 1, 10), _row(BATCHING, 4, 30), _row(NO_BATCHING, 1, 9), _row(NO_BATCHING, 4, 12)]
    doc = write(tmp_path, rows, [InProcessResult("/fill-mask", "m", 4, 100, 2.0, 0.5, 1.5, 1)], {"command": "x"})
    with (tmp_path / "report.csv").open() as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS and len(table) == 4
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["command"] == "x" and len(saved["rows"]) == 4 and saved["inprocess"][0]["items_per_s"] == 50
    assert [Path(p).name for p in doc["plots"]] == ["throughput.png", "latency.png", "batching.png"]
    for path in doc["plots"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_step_result_properties() -> None:
    step = StepResult("/x", 1, 1.0, statuses=Counter({200: 3, 429: 1}))
    assert (step.requests, step.ok, step.overloaded, step.other_errors) == (4, 3, 1, 0)
    assert step.percentile(50) != step.percentile(50)  # NaN without latencies
