"""The preload supervisor: readiness comes back by itself after a preloaded model fails to reload, the
supervisor outlives its own errors, and it stops with the app."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from server.app import build_app
from server.engine.loading import LoadedModel, load_model
from server.settings import ModelSpec, Settings
from tests.server.support import assert_error, open_client

pytestmark = pytest.mark.anyio
SUPERVISOR = "preload-supervisor"


class SwitchLoader:
    """The real loader, except that loads of `name` fail while `failing` is set; `loaded` is set at each
    successful load of `name`."""

    def __init__(self, name: str) -> None:
        self.name, self.failing = name, False
        self.loaded, self.failed = threading.Event(), threading.Event()
        self.calls = 0

    def __call__(self, spec: ModelSpec, settings: Settings) -> LoadedModel:
        if spec.name != self.name:
            return load_model(spec, settings)
        self.calls += 1
        if self.failing:
            self.failed.set()
            raise OSError(f"cannot open /srv/models/{spec.name}/model.safetensors (injected)")
        loaded = load_model(spec, settings)
        self.loaded.set()
        return loaded


async def wait_for(event: threading.Event, timeout_s: float = 10) -> None:
    assert await asyncio.to_thread(event.wait, timeout_s), "the event never came"


async def until_ready(client: httpx.AsyncClient) -> None:
    for _ in range(500):
        if (await client.get("/health/ready")).status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never ready")


async def status_of(client: httpx.AsyncClient, name: str) -> str:
    models = (await client.get("/v1/models")).json()["models"]
    return next(m["status"] for m in models if m["name"] == name)


async def lose_mlm(client: httpx.AsyncClient, how: str) -> None:
    """Take the preloaded `mlm` out of memory: unloaded by the admin API, or evicted by loading `conv`."""
    if how == "unload":
        assert (await client.post("/v1/models/mlm/unload")).json()["status"] == "unloaded"
    else:
        assert (await client.post("/v1/models/conv/load")).json()["status"] == "ready"
    assert await status_of(client, "mlm") == "unloaded"


@pytest.mark.parametrize("how", ["unload", "evict"])
async def test_readiness_recovers_by_itself_after_a_preloaded_model_fails_to_reload(
    make_settings: Callable[..., Settings], how: str
) -> None:
    loader = SwitchLoader("mlm")
    settings = make_settings(
        server={"preload": ["mlm"], "admin_api": True, "load_retry_s": 0, "memory_budget_mb": 1}
    )  # mlm + conv are over 1 MB: loading conv evicts mlm
    async with open_client(build_app(settings, loader=loader)) as client:
        await until_ready(client)
        await lose_mlm(client, how)
        assert (await client.get("/health/ready")).status_code == 200  # unloaded is not failed
        loader.failing = True
        failed = await client.post("/fill-mask", json={"inputs": "x [MASK]"})  # the reload fails
        assert_error(failed, 503, "model_unavailable", "injected")
        assert_error(await client.get("/health/ready"), 503, "not_ready", "mlm", "injected")
        loader.loaded.clear()
        loader.failing = False
        await wait_for(loader.loaded)  # the supervisor's retry; nothing but probes was sent since
        await until_ready(client)
        assert await status_of(client, "mlm") == "ready"
        assert (await client.post("/fill-mask", json={"inputs": "x [MASK]"})).status_code == 200


async def test_the_supervisor_keeps_retrying_while_the_load_keeps_failing(
    make_settings: Callable[..., Settings],
) -> None:
    loader = SwitchLoader("mlm")
    loader.failing = True
    settings = make_settings(server={"preload": ["mlm"], "load_retry_s": 0})
    async with open_client(build_app(settings, loader=loader)) as client:
        for attempt in range(1, 4):  # the start-up preload, then one retry a second
            await wait_for(loader.failed)
            loader.failed.clear()
            assert loader.calls == attempt
            ready = await client.get("/health/ready")  # the start-up preload may not have returned yet
            assert_error(ready, 503, "not_ready", *(["failed to load"] if attempt > 1 else []))
        loader.failing = False
        await wait_for(loader.loaded)
        await until_ready(client)


async def test_the_supervisor_survives_its_own_errors(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    loader = SwitchLoader("mlm")
    loader.failing = True
    app = build_app(make_settings(server={"preload": ["mlm"], "load_retry_s": 0}), loader=loader)
    registry = app.state.registry
    real_preload, broke = registry.preload, threading.Event()

    async def preload_that_breaks_once(names: Any) -> None:
        if not broke.is_set() and loader.calls >= 1:  # the start-up preload ran; its first retry breaks
            broke.set()
            raise RuntimeError("the registry broke (injected)")
        await real_preload(names)

    registry.preload = preload_that_breaks_once
    async with open_client(app) as client:
        await wait_for(broke)
        loader.failing = False
        await wait_for(loader.loaded)  # the retry after the broken one
        await until_ready(client)
    assert "the registry broke (injected)" in caplog.text and "a retry failed" in caplog.text


async def test_the_supervisor_stops_with_the_app(make_settings: Callable[..., Settings]) -> None:
    loader = SwitchLoader("mlm")
    loader.failing = True
    app = build_app(make_settings(server={"preload": ["mlm"], "load_retry_s": 0}), loader=loader)
    async with open_client(app):
        await wait_for(loader.failed)
        [supervisor] = [t for t in asyncio.all_tasks() if t.get_name() == SUPERVISOR]
        assert not supervisor.done()
    assert supervisor.cancelled()


async def test_without_preloads_there_is_nothing_to_supervise(make_settings: Callable[..., Settings]) -> None:
    async with open_client(build_app(make_settings())) as client:
        assert (await client.get("/health/ready")).status_code == 200
        assert not [t for t in asyncio.all_tasks() if t.get_name() == SUPERVISOR]
