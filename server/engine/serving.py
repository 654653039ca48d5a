"""The serving object the routes call: pick the model, wait for it, run items through its batcher.

A call has one deadline (a request's: arrival + request_timeout_s, or the earliest timeout its client asked for,
each capped: an X-Request-Timeout header, the protocol's `timeout` parameter, a gRPC deadline; a job's: per unit
of work) and, when a client waits on it, an awaitable that returns when that client goes away: its items still
queued are then dropped before they reach the model. Nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from server.engine.batching import Outcome, Pending
from server.engine.devices import default_timeout_s
from server.engine.registry import Entry, Registry
from server.errors import ErrorCode, ServeError
from server.limits import Limits
from server.settings import ModelSpec, Settings, Task

_DROP_REASONS = {ErrorCode.TIMEOUT: "expired", ErrorCode.CLIENT_CLOSED: "disconnected"}
T = TypeVar("T")
R = TypeVar("R")
Disconnected = Callable[[], Awaitable[None]]  # returns when the client has gone away


@dataclass
class Timing:
    """What a call's items cost on the model, over every infer() of the call (a flow request's tiles, a video
    request's encodes and decode passes): how many, the longest queue wait and forward pass any of them had, the
    largest batch, and each forward pass that carried any of them, counted once."""

    items: int = 0
    queue_s: float = 0.0
    inference_s: float = 0.0
    batch_size: int = 0
    passes: dict[int, float] = field(default_factory=dict)  # forward pass -> its duration

    def add(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            self.items += 1
            self.queue_s = max(self.queue_s, o.queue_s)
            self.inference_s = max(self.inference_s, o.inference_s)
            self.batch_size = max(self.batch_size, o.batch_size)
            self.passes[o.batch] = o.inference_s

    @property
    def total_inference_s(self) -> float:
        return sum(self.passes.values())

    def figures(self) -> dict[str, int | float]:
        """What the answer's timing headers and the access line report: milliseconds to 2 decimals, and counts.
        Empty when no item reached the model."""
        if not self.items:
            return {}
        return {
            "items": self.items,
            "queue_ms": round(self.queue_s * 1000, 2),
            "inference_ms": round(self.inference_s * 1000, 2),
            "inference_total_ms": round(self.total_inference_s * 1000, 2),
            "batch_size": self.batch_size,
        }


class Call:
    """One request's (or one job's) use of one model."""

    def __init__(
        self,
        entry: Entry,
        *,
        deadline: float,
        service: InferenceService,
        disconnected: Disconnected | None,
        unit_timeout_s: float | None = None,
    ) -> None:
        self.entry, self.deadline, self.service, self.disconnected = entry, deadline, service, disconnected
        self.unit_timeout_s = unit_timeout_s  # a job: each infer() gets this long, instead of one deadline
        self.runner: Any = entry.model.runner if entry.model else None
        self.limits = service.limits
        self.timing = Timing()

    def runner_as(self, kind: type[R]) -> R:
        """The model's task runner, as the kind the caller works with (a model configured for another task's
        runner is a server error, not the request's)."""
        if not isinstance(self.runner, kind):
            raise ServeError(
                ErrorCode.INTERNAL,
                f"model {self.entry.spec.name!r} is served by {type(self.runner).__name__}, not {kind.__name__}",
            )
        return self.runner

    async def decode(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(...) as one media decode unit (at most `max_concurrent_decodes` run at once)."""
        return await self.service.decode(fn, *args, **kwargs)

    def step(self, name: str, **attributes: str | int | float | bool) -> Any:
        """A named step of this request (decode, encode) for its trace: a context manager."""
        return self.service.tracing.step(name, **attributes)

    async def infer(self, items: Sequence[Any]) -> list[Any]:
        """Results of `items`, in order; they may share batches with other requests' items."""
        batcher = self.entry.batcher
        if batcher is None:
            raise ServeError(ErrorCode.MODEL_UNAVAILABLE, f"model {self.entry.spec.name!r} is not loaded")
        if self.unit_timeout_s is not None:
            self.deadline = time.monotonic() + self.unit_timeout_s
        queued: list[Pending] = []
        try:
            for item in items:
                queued.append(batcher.enqueue(item, deadline=self.deadline))
            outcomes = await self._wait(queued)
        except ServeError as exc:
            for pending in queued:
                batcher.abandon(pending, _DROP_REASONS.get(exc.code))
            raise
        except asyncio.CancelledError:
            for pending in queued:
                batcher.abandon(pending, "disconnected")
            raise
        self.timing.add(outcomes)
        return [o.result for o in outcomes]

    async def _wait(self, queued: list[Pending]) -> list[Outcome]:
        # With no client to watch (a job), the watcher never returns: cancel the job to stop it.
        watcher = asyncio.ensure_future(self.disconnected() if self.disconnected else asyncio.Event().wait())
        waiting: set[asyncio.Future[Any]] = {p.future for p in queued}
        try:
            while waiting:
                remaining = self.deadline - time.monotonic()
                done, waiting = await asyncio.wait(
                    waiting | {watcher}, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED
                )
                if watcher in done:
                    raise ServeError(ErrorCode.CLIENT_CLOSED, "client disconnected")
                waiting.discard(watcher)
                if not done:
                    raise ServeError(ErrorCode.TIMEOUT, "request timed out before inference finished")
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
            return [p.future.result() for p in queued]
        finally:
            watcher.cancel()


class InferenceService:
    def __init__(self, *, registry: Registry, settings: Settings) -> None:
        self.registry, self.settings = registry, settings
        self.tracing = registry.tracing
        self.limits = Limits.of(settings.server)
        # A decoded 64-megapixel image is ~200 MB: bound how many decode at once, whatever the load.
        self._decodes = anyio.CapacityLimiter(settings.server.max_concurrent_decodes or max(2, os.cpu_count() or 2))

    async def decode(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) on a worker thread, at most `max_concurrent_decodes` at a time (media decoding)."""
        with self.tracing.step("decode", step=getattr(fn, "__name__", "decode")):
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._decodes)

    def deadline(self, started: float, *asked_s: float | None, spec: ModelSpec | None = None) -> float:
        """The deadline of a request that arrived at `started` (time.monotonic()): the earliest of the timeouts its
        client asked for (seconds; None or <= 0: not asked), each capped at request_timeout_cap_s, else the default
        of its model `spec` on the kind of device it lands on, else request_timeout_s after its arrival."""
        server = self.settings.server
        asked = [min(s, server.request_timeout_cap_s) for s in asked_s if s is not None and s > 0]
        return started + (min(asked) if asked else default_timeout_s(spec, self.settings))

    def resolve(self, task: Task, model: str | None) -> ModelSpec:
        """The configured model of `task` named `model` (name, alias or source), or the task's default."""
        return self.registry.resolve(task, model)

    @asynccontextmanager
    async def open(
        self,
        spec: ModelSpec,
        *,
        deadline: float,
        disconnected: Disconnected | None = None,
        unit_timeout_s: float | None = None,
    ) -> AsyncIterator[Call]:
        """The ready model `spec`, loaded first if needed (within `deadline`), held for the block."""
        left_s = deadline - time.monotonic()
        if left_s <= 0:  # a timeout shorter than the way here (a `timeout` of 1 µs): not the model's fault
            raise ServeError(ErrorCode.TIMEOUT, "request timed out before inference started")
        try:
            entry = await asyncio.wait_for(self.registry.acquire(spec), left_s)
        except TimeoutError:
            raise ServeError(
                ErrorCode.TIMEOUT, f"model {spec.name!r} is still loading; retry shortly", retry_after=5
            ) from None
        entry.active += 1
        try:
            yield Call(entry, deadline=deadline, service=self, disconnected=disconnected, unit_timeout_s=unit_timeout_s)
        finally:
            entry.active -= 1
            entry.last_used = time.monotonic()
