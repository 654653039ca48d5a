"""Load shedding, deadlines, disconnects and batching, through the HTTP surface."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import httpx
import pytest

from server.app import build_app
from server.settings import Settings
from tests.server.support import open_client

pytestmark = pytest.mark.anyio
MASKED = {"inputs": "Hello [MASK]orld"}


async def until_ready(client: httpx.AsyncClient) -> None:
    for _ in range(300):
        if (await client.get("/health/ready")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("app not ready")


async def wait_for(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)


async def test_full_queue_answers_429_with_retry_after(
    make_settings: Callable[..., Settings], gate, read_metric
) -> None:
    app = build_app(make_settings(max_batch_size=1, max_queue=1, max_delay_ms=0), loader=gate.loader)
    async with open_client(app) as client:
        running = asyncio.create_task(client.post("/fill-mask", json=MASKED))
        await wait_for(gate.entered)  # the first request is in the model
        queued = asyncio.create_task(client.post("/fill-mask", json=MASKED))
        for _ in range(100):
            if app.state.registry.entries["mlm"].batcher.depth == 1:
                break
            await asyncio.sleep(0.01)
        metrics = (await client.get("/metrics")).text
        assert read_metric(metrics, "perceiver_inflight_requests") == 2
        assert read_metric(metrics, "perceiver_queue_depth", model="mlm") == 1
        shed = await client.post("/fill-mask", json=MASKED)
        assert shed.status_code == 429 and shed.json()["error"]["code"] == "overloaded"
        assert int(shed.headers["Retry-After"]) >= 1
        gate.open.set()
        assert [(await t).status_code for t in (running, queued)] == [200, 200]
        metrics = (await client.get("/metrics")).text
        assert read_metric(metrics, "perceiver_requests_total", route="/fill-mask", status="429") == 1
        assert read_metric(metrics, "perceiver_inflight_requests") == 0


async def test_requests_past_their_deadline_get_504_and_never_run(
    make_settings: Callable[..., Settings], gate, read_metric
) -> None:
    settings = make_settings(server={"request_timeout_s": 0.5, "preload": ["mlm"]}, max_batch_size=1, max_delay_ms=0)
    app = build_app(settings, loader=gate.loader)
    async with open_client(app) as client:
        await until_ready(client)
        running = asyncio.create_task(client.post("/fill-mask", json=MASKED))
        await wait_for(gate.entered)
        late = await client.post("/fill-mask", json={"inputs": "late [MASK]"})
        assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
        assert (await running).status_code == 504  # still in the model at its deadline
        gate.open.set()
        await asyncio.sleep(0.1)
        assert gate.forwards == 1  # the late request was dropped before it reached the model
        metrics = (await client.get("/metrics")).text
        assert read_metric(metrics, "perceiver_requests_dropped_total", model="mlm", reason="expired") == 1


async def test_concurrent_requests_batch_and_match_their_single_answers(
    make_settings: Callable[..., Settings], read_metric
) -> None:
    texts = [f"Request number {i} says hello [MASK]orld" + "!" * i for i in range(8)]
    app = build_app(make_settings(max_batch_size=8, max_delay_ms=200))
    async with open_client(app) as client:
        together = await asyncio.gather(*(client.post("/fill-mask", json={"inputs": t}) for t in texts))
        metrics = (await client.get("/metrics")).text
        alone = [await client.post("/fill-mask", json={"inputs": t}) for t in texts]
    assert max(int(r.headers["X-Batch-Size"]) for r in together) > 1
    assert read_metric(metrics, "perceiver_batch_size_sum", model="mlm") > read_metric(
        metrics, "perceiver_batch_size_count", model="mlm"
    )
    assert all(int(r.headers["X-Batch-Size"]) == 1 for r in alone)
    assert [r.json() for r in together] == [r.json() for r in alone]


async def test_a_stuck_batch_fails_liveness(make_settings: Callable[..., Settings], gate) -> None:
    app = build_app(make_settings(server={"stall_seconds": 1, "preload": ["mlm"]}, max_delay_ms=0), loader=gate.loader)
    async with open_client(app) as client:
        await until_ready(client)
        running = asyncio.create_task(client.post("/fill-mask", json=MASKED))
        await wait_for(gate.entered)
        assert (await client.get("/health/live")).status_code == 200
        await asyncio.sleep(1.1)
        r = await client.get("/health/live")
        assert r.status_code == 503 and r.json()["error"]["code"] == "unhealthy" and "mlm" in r.text
        gate.open.set()
        assert (await running).status_code == 200
        assert (await client.get("/health/live")).status_code == 200


@pytest.mark.parametrize("limit", [1, 3])
async def test_media_decodes_run_at_most_max_concurrent_decodes_at_a_time(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    import time

    import server.media.image as route
    from tests.server.crafted import image_file

    running, peak, lock = 0, 0, threading.Lock()
    real = route.opened  # every image decode (header probe, decode, decode-and-shrink) goes through it

    def slow_decode(*args, **kwargs):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(route, "opened", slow_decode)
    app = build_app(make_settings({"max_concurrent_decodes": limit}))
    async with open_client(app) as client:
        answers = await asyncio.gather(
            *(
                client.post("/classify-image", content=image_file(seed=i), headers={"Content-Type": "image/png"})
                for i in range(6)
            )
        )
    assert [r.status_code for r in answers] == [200] * 6
    assert peak == limit


def test_timing_counts_each_forward_pass_once() -> None:
    from server.engine.batching import Outcome
    from server.engine.serving import Timing

    timing = Timing()
    timing.add([Outcome(None, 0.01, 0.2, 3, batch=1), Outcome(None, 0.02, 0.2, 3, batch=1)])  # two tiles, one pass
    timing.add([Outcome(None, 0.5, 0.1, 1, batch=2)])  # a later pass
    assert (timing.items, timing.queue_s, timing.inference_s, timing.batch_size) == (3, 0.5, 0.2, 3)
    assert timing.total_inference_s == pytest.approx(0.3)


def test_a_model_default_deadline_is_for_its_device_and_within_the_cap(make_settings: Callable[..., Settings]) -> None:
    from types import SimpleNamespace

    from server.engine.serving import InferenceService

    models = {"flow": {"task": "optical-flow", "source": "x/flow", "request_timeout_s": {"cpu": 300, "cuda": 60}}}
    for cap, expected in ((None, 300.0), (100.0, 100.0)):
        server = {"device": "cpu", "request_timeout_s": 30, "max_request_timeout_s": cap}
        settings = make_settings(server=server, models=models)
        service = InferenceService(registry=SimpleNamespace(tracing=None), settings=settings)  # type: ignore[arg-type]
        spec = settings.models["flow"]
        assert service.deadline(10.0, spec=spec) == 10.0 + expected
        assert service.deadline(10.0, None, 5.0, spec=spec) == 15.0  # asked for: the client's
        assert service.deadline(10.0) == 40.0  # no model: the server's
