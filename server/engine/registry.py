"""The model registry: lazy single-flight loading, status, preload/unload, LRU eviction under a memory budget."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import torch
from pydantic import BaseModel

from server.engine.batching import Batcher
from server.engine.devices import cpu_threads, dtype_name, thread_options
from server.engine.loading import LoadedModel, load_model
from server.engine.metrics import Metrics
from server.errors import ErrorCode, ServeError
from server.observability.tracing import Tracing
from server.settings import ModelSpec, Settings, Task

log = logging.getLogger(__name__)

Loader = Callable[[ModelSpec, Settings], LoadedModel]


class ModelInfo(BaseModel):
    name: str
    task: str
    source: str
    status: Literal["unloaded", "loading", "ready", "failed"]
    device: str | None = None
    dtype: str | None = None
    reason: str | None = None
    random_weights: bool = False
    is_default: bool = False
    aliases: list[str] = []
    parameter_bytes: int | None = None
    queue_depth: int | None = None


class ModelList(BaseModel):
    models: list[ModelInfo]


class ModelState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(eq=False)
class Entry:
    spec: ModelSpec
    state: ModelState = ModelState.UNLOADED
    reason: str | None = None
    failed_at: float = 0.0
    model: LoadedModel | None = None
    batcher: Batcher | None = None
    loading: asyncio.Task[None] | None = None
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0  # requests holding this model right now


class Registry:
    def __init__(
        self, *, settings: Settings, metrics: Metrics, loader: Loader = load_model, tracing: Tracing | None = None
    ) -> None:
        self.settings, self.metrics, self.loader = settings, metrics, loader
        self.tracing = tracing or Tracing()
        self.entries = {name: Entry(spec) for name, spec in settings.models.items()}
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="model-loader")
        self._cpu_threads = cpu_threads(settings)  # every core (or the setting), read before any batcher runs

    def resolve(self, task: Task, name: str | None) -> ModelSpec:
        """The model of `task` called `name` (name, alias or source), or the task's default."""
        spec = self.settings.default_model(task) if name is None else self.settings.find_model(task, name)
        if spec is not None:
            return spec
        if name is not None:
            known = ", ".join(m.name for m in self.settings.models.values() if m.task == task) or "none"
            raise ServeError(ErrorCode.UNKNOWN_MODEL, f"no {task.value} model named {name!r} (configured: {known})")
        raise ServeError(
            ErrorCode.NO_MODEL_FOR_TASK,
            (
                f"no {task.value} model is configured. Add one to the config file, e.g. [models.my-model] with "
                f'task = "{task.value}" and source = a hub id or a local folder written by save_pretrained'
            ),
        )

    async def acquire(self, spec: ModelSpec) -> Entry:
        """The ready entry of `spec`, loading it first (once, however many callers wait)."""
        entry = self.entries[spec.name]
        entry.last_used = time.monotonic()
        if entry.state is ModelState.FAILED:
            wait = entry.failed_at + self.settings.server.load_retry_s - time.monotonic()
            if wait > 0:
                raise ServeError(ErrorCode.MODEL_UNAVAILABLE, entry.reason or "load failed", retry_after=wait)
        if entry.state is not ModelState.READY:
            if entry.loading is None:
                entry.loading = asyncio.get_running_loop().create_task(self._load(entry))
            await asyncio.shield(entry.loading)
        if entry.state is not ModelState.READY:
            raise ServeError(
                ErrorCode.MODEL_UNAVAILABLE,
                entry.reason or "load failed",
                retry_after=self.settings.server.load_retry_s,
            )
        return entry

    async def _load(self, entry: Entry) -> None:
        entry.state, entry.reason = ModelState.LOADING, None
        started = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(self._executor, self.loader, entry.spec, self.settings)
            spec = entry.spec
            if model.runner is not None:
                entry.batcher = Batcher(
                    name=spec.name,
                    runner=model.runner,
                    max_batch_size=spec.max_batch_size,
                    max_delay_s=spec.max_delay_ms / 1000,
                    max_queue=spec.max_queue,
                    metrics=self.metrics,
                    tracing=self.tracing,
                    threads=thread_options(getattr(model, "device", None), self.settings, self._cpu_threads),
                )
            entry.model, entry.state = model, ModelState.READY
            gc.freeze()  # the model's objects live as long as it is loaded: keep them out of every collection
            took = time.monotonic() - started
            self.metrics.model_load.labels(model=spec.name).observe(took)
            self.metrics.models_loaded.set(self.loaded_count())
            about = {"model": spec.name, "duration_s": round(took, 3), "device": str(model.device)}
            log.info(
                "model %s: ready in %.2fs (%s on %s, %s, %.1f MB)",
                spec.name,
                took,
                spec.source,
                model.device,
                dtype_name(model.dtype),
                model.parameter_bytes / 2**20,
                extra=about,
            )
            await self._enforce_budget(keep=entry)
        except Exception as exc:
            reason = exc.message if isinstance(exc, ServeError) else f"model {entry.spec.name!r}: load failed: {exc}"
            took = time.monotonic() - started
            about = {"model": entry.spec.name, "duration_s": round(took, 3)}
            log.error("model %s: load failed after %.2fs: %s", entry.spec.name, took, reason, extra=about)
            self.metrics.load_failures.labels(model=entry.spec.name).inc()
            entry.state, entry.reason, entry.failed_at = ModelState.FAILED, reason, time.monotonic()
        finally:
            entry.loading = None

    def stuck(self, limit_s: float) -> list[str]:
        """Models whose batcher has made no progress for `limit_s`: a batch running, or queued work not taken."""
        return [n for n, e in self.entries.items() if e.batcher is not None and e.batcher.stalled_for > limit_s]

    def failed(self, names: Iterable[str]) -> dict[str, str]:
        """Of `names` ('all' for every model), those whose last load failed, with the reason."""
        names = list(self.entries) if "all" in names else list(names)
        return {n: self.entries[n].reason or "load failed" for n in names if self.entries[n].state is ModelState.FAILED}

    def loaded_count(self) -> int:
        return sum(e.state is ModelState.READY for e in self.entries.values())

    async def preload(self, names: Iterable[str]) -> None:
        names = list(self.entries) if "all" in names else list(names)
        await asyncio.gather(*(self._preload_one(self.entries[n].spec) for n in names))

    async def _preload_one(self, spec: ModelSpec) -> None:
        try:
            await self.acquire(spec)
        except ServeError as exc:
            log.error("preload %s failed: %s", spec.name, exc.message)

    async def unload(self, name: str) -> None:
        started = time.monotonic()
        entry = self.entries[name]
        if entry.loading is not None:
            await asyncio.shield(entry.loading)
        batcher, model = entry.batcher, entry.model
        entry.state, entry.model, entry.batcher, entry.reason = ModelState.UNLOADED, None, None, None
        if batcher is not None:  # finishes what is queued, within one request deadline
            await batcher.close(timeout_s=self.settings.server.request_timeout_s + 5)
        self.metrics.models_loaded.set(self.loaded_count())
        if model is not None:
            on_cuda = model.device.type == "cuda"
            del model, batcher
            gc.unfreeze()  # frozen at load: let the model's objects be collected, cycles included
            gc.collect()
            gc.freeze()
            if on_cuda:
                torch.cuda.empty_cache()
            took = time.monotonic() - started
            log.info("model %s: unloaded in %.2fs", name, took, extra={"model": name, "duration_s": round(took, 3)})

    async def _enforce_budget(self, *, keep: Entry) -> None:
        budget_mb = self.settings.server.memory_budget_mb
        if budget_mb is None:
            return
        sizes = {e: e.model.parameter_bytes for e in self.entries.values() if e.model is not None}
        used = sum(sizes.values())
        idle = sorted((e for e in sizes if e is not keep and e.active == 0), key=lambda e: e.last_used)
        while used > budget_mb * 2**20 and idle:
            victim = idle.pop(0)
            used -= sizes[victim]
            log.info(
                "model %s: evicted (least recently used) to stay within %d MB",
                victim.spec.name,
                budget_mb,
                extra={"model": victim.spec.name},
            )
            await self.unload(victim.spec.name)
        if used > budget_mb * 2**20:
            log.warning("loaded models use %.0f MB, over the %d MB budget", used / 2**20, budget_mb)

    def describe(self) -> list[ModelInfo]:
        infos = []
        for name, e in self.entries.items():
            m, default = e.model, self.settings.default_model(e.spec.task)
            infos.append(
                ModelInfo(
                    name=name,
                    task=e.spec.task.value,
                    source=e.spec.source,
                    status=e.state.value,
                    device=str(m.device) if m else None,
                    dtype=dtype_name(m.dtype) if m else None,
                    reason=e.reason,
                    random_weights=e.spec.random_weights,
                    is_default=default is not None and default.name == name,
                    aliases=e.spec.aliases,
                    parameter_bytes=m.parameter_bytes if m else None,
                    queue_depth=e.batcher.depth if e.batcher else None,
                )
            )
        return infos

    async def close(self) -> None:
        for name, entry in self.entries.items():
            if entry.state is ModelState.READY:  # a load still running in its thread is abandoned
                await self.unload(name)
        self._executor.shutdown(wait=False, cancel_futures=True)
