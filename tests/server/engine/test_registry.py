from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from server.engine.loading import LoadedModel, load_model
from server.engine.metrics import Metrics
from server.engine.registry import ModelState, Registry
from server.errors import ErrorCode, ServeError
from server.settings import ModelSpec, Settings, Task

pytestmark = pytest.mark.anyio


class CountingLoader:
    def __init__(self, delay_s: float = 0.2) -> None:
        self.calls: list[str] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, spec: ModelSpec, settings: Settings) -> LoadedModel:
        with self.lock:
            self.calls.append(spec.name)
        time.sleep(self.delay_s)  # long enough for every caller to arrive while loading
        return load_model(spec, settings)


async def test_concurrent_first_requests_share_one_load(make_settings: Callable[..., Settings]) -> None:
    loader, metrics = CountingLoader(), Metrics()
    registry = Registry(settings=make_settings(), metrics=metrics, loader=loader)
    spec = registry.resolve(Task.FILL_MASK, None)
    entries = await asyncio.gather(*(registry.acquire(spec) for _ in range(16)))
    assert loader.calls == ["mlm"]
    assert all(e is entries[0] for e in entries) and entries[0].state is ModelState.READY
    assert metrics.model_load.labels(model="mlm")._sum.get() > 0
    assert metrics.models_loaded._value.get() == 1
    await registry.close()


async def test_resolve_by_name_alias_source_and_default(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    registry = Registry(settings=settings, metrics=Metrics())
    assert registry.resolve(Task.IMAGE_CLASSIFICATION, None).name == "conv"
    assert registry.resolve(Task.IMAGE_CLASSIFICATION, "c").name == "conv"
    assert registry.resolve(Task.IMAGE_CLASSIFICATION, settings.models["conv-b"].source).name == "conv-b"
    with pytest.raises(ServeError) as info:
        registry.resolve(Task.IMAGE_CLASSIFICATION, "mlm")  # exists, but for another task
    assert info.value.code is ErrorCode.UNKNOWN_MODEL and info.value.status == 404
    no_text = Registry(settings=make_settings(models={}), metrics=Metrics())
    with pytest.raises(ServeError) as info:
        no_text.resolve(Task.TEXT_CLASSIFICATION, None)
    assert info.value.code is ErrorCode.NO_MODEL_FOR_TASK and "[models." in info.value.message


async def test_failed_load_reports_reason_and_retries_later(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loader = CountingLoader(delay_s=0)
    registry = Registry(settings=make_settings(server={"load_retry_s": 0.2}), metrics=Metrics(), loader=loader)
    spec = registry.resolve(Task.FILL_MASK, "offline")
    for _ in range(2):
        with pytest.raises(ServeError) as info:
            await registry.acquire(spec)
        assert info.value.code is ErrorCode.MODEL_UNAVAILABLE and info.value.retry_after
    assert loader.calls == ["offline"]  # the second call answered from the recorded failure
    [info_] = [m for m in registry.describe() if m.name == "offline"]
    assert info_.status == "failed" and "perceiver-serve download offline" in info_.reason
    await asyncio.sleep(0.25)
    with pytest.raises(ServeError):
        await registry.acquire(spec)
    assert loader.calls == ["offline", "offline"]
    await registry.close()


async def test_memory_budget_evicts_least_recently_used(make_settings: Callable[..., Settings]) -> None:
    registry = Registry(settings=make_settings(server={"memory_budget_mb": 1}), metrics=Metrics())
    conv = await registry.acquire(registry.resolve(Task.IMAGE_CLASSIFICATION, "conv"))
    assert conv.model is not None and conv.model.parameter_bytes > 2**19  # two image models exceed 1 MB
    await registry.acquire(registry.resolve(Task.FILL_MASK, "mlm"))
    await registry.acquire(registry.resolve(Task.IMAGE_CLASSIFICATION, "conv-b"))
    states = {m.name: m.status for m in registry.describe()}
    assert states["conv"] == "unloaded"  # least recently used
    assert states["conv-b"] == "ready"
    await registry.close()


async def test_unload_then_reload(make_settings: Callable[..., Settings]) -> None:
    loader = CountingLoader(delay_s=0)
    registry = Registry(settings=make_settings(), metrics=Metrics(), loader=loader)
    spec = registry.resolve(Task.TEXT_CLASSIFICATION, None)
    await registry.acquire(spec)
    await registry.unload("sentiment")
    assert registry.entries["sentiment"].state is ModelState.UNLOADED and registry.loaded_count() == 0
    await registry.acquire(spec)
    assert loader.calls == ["sentiment", "sentiment"]
    [info] = [m for m in registry.describe() if m.name == "sentiment"]
    assert (info.status, info.device, info.dtype) == ("ready", "cpu", "float32")
    await registry.close()


async def test_preload(make_settings: Callable[..., Settings]) -> None:
    registry = Registry(settings=make_settings(), metrics=Metrics())
    await registry.preload(["mlm", "offline"])  # a failure is logged, not raised
    states = {m.name: m.status for m in registry.describe()}
    assert states["mlm"] == "ready" and states["offline"] == "failed" and states["conv"] == "unloaded"
    await registry.close()
