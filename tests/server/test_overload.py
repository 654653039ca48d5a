"""Overload, out-of-memory and failing models: the excess or the culprit fails alone, clearly; the rest is served."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from server.app import build_app
from server.engine.loading import LoadedModel, load_model
from server.settings import ModelSpec, Settings
from tests.server.conftest import REPO
from tests.server.support import assert_error, open_client, with_forward

# Loaded by the spawned server's interpreter at start-up (PYTHONPATH): every fill-mask forward first sleeps.
# It lives in the test, never in the server: production code has no slow-down switch.
SLOW_FORWARD = """
import os, time
from server.tasks.fill_mask import FillMaskRunner

_forward = FillMaskRunner.forward


def _slow_forward(self, batch):
    time.sleep(float(os.environ["PERCEIVER_TEST_FORWARD_DELAY_S"]))
    return _forward(self, batch)


FillMaskRunner.forward = _slow_forward
"""


def slowed_env(tmp_path: Path, delay_s: float) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(SLOW_FORWARD)
    return {"PYTHONPATH": f"{tmp_path}:{REPO}", "PERCEIVER_TEST_FORWARD_DELAY_S": str(delay_s)}


@pytest.mark.slow
def test_a_burst_over_the_queue_is_shed_with_429_and_the_rest_answered_right(
    spawn_server: Callable[..., str], toml_writer, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    delay_s, queue, clients = 0.25, 2, 24
    models = {
        "mlm": {
            "task": "fill-mask",
            "source": str(checkpoints["mlm"]),
            "max_batch_size": 1,
            "max_delay_ms": 0,
            "max_queue": queue,
        }
    }
    config = toml_writer(tmp_path / "serve.toml", {"server": {"device": "cpu"}, "models": models})
    base = spawn_server(
        "--config", str(config), "--preload", "mlm", "--log-level", "warning", env=slowed_env(tmp_path, delay_s)
    )
    texts = [f"Request {i} asks: [MASK][MASK]?" for i in range(4)]
    alone = {t: httpx.post(f"{base}/fill-mask", json={"inputs": t}, timeout=30).json() for t in texts}
    start = threading.Barrier(clients)

    def one(i: int) -> tuple[str, httpx.Response, float]:
        text = texts[i % len(texts)]
        start.wait()
        began = time.monotonic()
        response = httpx.post(f"{base}/fill-mask", json={"inputs": text}, timeout=30)
        return text, response, time.monotonic() - began

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    statuses = sorted(r.status_code for _, r, _ in results)
    served = [(t, r, s) for t, r, s in results if r.status_code == 200]
    shed = [(r, s) for _, r, s in results if r.status_code == 429]
    assert set(statuses) == {200, 429}, statuses  # nothing else: no 5xx, no timeouts
    assert len(served) >= queue + 1 and len(shed) >= clients // 2, statuses
    for response, seconds in shed:
        assert_error(response, 429, "overloaded", "queue is full")
        assert int(response.headers["Retry-After"]) >= 1
        assert seconds < 2.0  # refused at once, not after waiting its turn
    for text, response, seconds in served:
        assert response.json() == alone[text]  # the right answer, as alone
        assert seconds < (queue + 1) * delay_s * len(served) + 5  # bounded: admission keeps the queue short
    assert httpx.get(f"{base}/health/live").status_code == 200
    after = httpx.post(f"{base}/fill-mask", json={"inputs": texts[0]}, timeout=30)
    assert after.status_code == 200 and after.json() == alone[texts[0]]


# ------------------------------------------------------------------------------ in-process fault injection


def wrap_forward(loaded: LoadedModel, forward: Callable[[Any, Callable[[Any], Any]], Any]) -> LoadedModel:
    """The model with `forward(batch, real_forward)` in place of its runner's forward."""
    return dataclasses.replace(loaded, runner=with_forward(loaded.runner, forward))


def out_of_memory(batch: Any, real: Callable[[Any], Any]) -> Any:
    """Out of memory for any batch of more than one, and for any text in the 64-token bucket or longer."""
    input_ids = batch[0]  # (B, L)
    if input_ids.shape[0] > 1 or input_ids.shape[1] >= 64:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
    return real(batch)


@pytest.mark.anyio
async def test_out_of_memory_splits_the_batch_and_fails_only_what_cannot_fit(
    make_settings: Callable[..., Settings], read_metric
) -> None:
    def loader(spec: ModelSpec, settings: Settings) -> LoadedModel:
        loaded = load_model(spec, settings)
        return wrap_forward(loaded, out_of_memory) if spec.name == "mlm" else loaded

    texts = [f"Short {i} [MASK]" for i in range(6)]
    app = build_app(make_settings(max_batch_size=8, max_delay_ms=200), loader=loader)
    async with open_client(app) as client:
        huge = "A much longer text that lands in the 64 bucket, alas, [MASK]" + "!" * 20
        together = await asyncio.gather(*(client.post("/fill-mask", json={"inputs": t}) for t in [*texts, huge]))
        *fine, failed = together
        assert all(r.status_code == 200 for r in fine), [r.text for r in fine]
        assert max(int(r.headers["X-Batch-Size"]) for r in fine) > 1  # they were batched, then split
        assert_error(failed, 503, "out_of_memory", "'mlm'", "this request alone")
        assert int(failed.headers["Retry-After"]) >= 1
        alone = [await client.post("/fill-mask", json={"inputs": t}) for t in texts]
        assert [r.json() for r in fine] == [r.json() for r in alone]
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.post("/classify-text", json={"inputs": "other models carry on"})).status_code == 200


def broken_forward(batch: Any, real: Callable[[Any], Any]) -> Any:
    raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")


@pytest.mark.anyio
async def test_a_failing_model_fails_only_its_own_requests(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    def loader(spec: ModelSpec, settings: Settings) -> LoadedModel:
        if spec.name == "conv-b":
            raise RuntimeError("weights are corrupt (injected)")
        loaded = load_model(spec, settings)
        return wrap_forward(loaded, broken_forward) if spec.name == "sentiment" else loaded

    async with open_client(build_app(make_settings(), loader=loader)) as client:
        from tests.server.crafted import image_file

        broken = await client.post("/classify-text", json={"inputs": ["a", "b"]})
        assert_error(broken, 500, "internal_error", "'sentiment'", "RuntimeError", "server log")
        assert "illegal memory access" not in broken.text  # internals stay in the log
        assert "illegal memory access" in caplog.text
        unloadable = await client.post("/classify-image?model=conv-b", content=image_file())
        assert_error(unloadable, 503, "model_unavailable", "'conv-b'", "weights are corrupt")
        assert (await client.post("/fill-mask", json={"inputs": "x [MASK]"})).status_code == 200
        assert (await client.post("/classify-image?model=conv", content=image_file())).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200  # neither is preloaded: the rest serves
        models = {m["name"]: m for m in (await client.get("/v1/models")).json()["models"]}
        assert models["conv-b"]["status"] == "failed" and "corrupt" in models["conv-b"]["reason"]


@pytest.mark.anyio
async def test_readiness_reflects_a_failed_preload_until_its_retry_loads_it(
    make_settings: Callable[..., Settings],
) -> None:
    attempts: list[str] = []

    def loader(spec: ModelSpec, settings: Settings) -> LoadedModel:
        attempts.append(spec.name)
        if spec.name == "sentiment" and attempts.count("sentiment") == 1:
            raise OSError("disk not mounted yet (injected)")
        return load_model(spec, settings)

    settings = make_settings(server={"preload": ["mlm", "sentiment"], "load_retry_s": 0})
    async with open_client(build_app(settings, loader=loader)) as client:
        for _ in range(100):
            r = await client.get("/health/ready")
            if "preloading" not in r.text:
                break
            await asyncio.sleep(0.02)
        assert_error(r, 503, "not_ready", "sentiment", "disk not mounted yet", "retried every 1s")
        assert "mlm" not in r.json()["error"]["message"]
        assert (await client.post("/fill-mask", json={"inputs": "x [MASK]"})).status_code == 200  # mlm serves
        for _ in range(150):  # the background retry, one second later
            if (await client.get("/health/ready")).status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert (await client.get("/health/ready")).status_code == 200
        assert attempts.count("sentiment") == 2


@pytest.mark.anyio
async def test_liveness_catches_a_dead_collector_with_work_waiting(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(server={"stall_seconds": 1, "preload": ["mlm"]}, max_delay_ms=0)
    app = build_app(settings)
    async with open_client(app) as client:
        while (await client.get("/health/ready")).status_code != 200:
            await asyncio.sleep(0.02)
        batcher = app.state.registry.entries["mlm"].batcher
        batcher._task.cancel()  # the collector dies while idle: nothing is running, nothing will be
        waiting = asyncio.create_task(
            client.post("/fill-mask", json={"inputs": "x [MASK]"}, headers={"X-Request-Timeout": "2"})
        )
        assert (await client.get("/health/live")).status_code == 200  # within max_delay: fine
        await asyncio.sleep(1.2)
        r = await client.get("/health/live")
        assert_error(r, 503, "unhealthy", "mlm", "no inference progress")
        assert_error(await waiting, 504, "timeout")  # and the waiting request still gets its answer
