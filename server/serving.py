"""The serving object routers call: pick the model, wait for it, run items through its batcher.

Every request has one deadline (arrival + request_timeout_s, or the X-Request-Timeout it asked for, capped);
a client that disconnects while its items are queued has them dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from server.batching import Outcome, Pending
from server.errors import ErrorCode, ServeError
from server.limits import Limits
from server.offload import Offload
from server.registry import Entry, Registry
from server.scope import DEADLINE_KEY, MODEL_KEY, STARTED_KEY
from server.settings import Settings, Task

_DROP_REASONS = {ErrorCode.TIMEOUT: "expired", ErrorCode.CLIENT_CLOSED: "disconnected"}
OFF_LOOP_ENTRIES = 256  # answers with more ranked entries than this are built on a worker thread
T = TypeVar("T")


class Call:
    """One request's use of one model."""

    def __init__(self, request: Request, entry: Entry, deadline: float, service: InferenceService) -> None:
        self.request, self.entry, self.deadline, self.service = request, entry, deadline, service
        self.runner: Any = entry.model.runner if entry.model else None
        self.limits = service.limits
        self.outcomes: list[Outcome] = []

    async def decode(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(...) as one media decode unit (at most `max_concurrent_decodes` run at once)."""
        return await self.service.decode(fn, *args, **kwargs)

    async def infer(self, items: Sequence[Any]) -> list[Any]:
        """Results of `items`, in order; they may share batches with other requests' items."""
        batcher = self.entry.batcher
        if batcher is None:
            raise ServeError(ErrorCode.MODEL_UNAVAILABLE, f"model {self.entry.spec.name!r} is not loaded")
        queued: list[Pending] = []
        try:
            for item in items:
                queued.append(batcher.enqueue(item, deadline=self.deadline))
            self.outcomes = await self._wait(queued)
        except ServeError as exc:
            for pending in queued:
                batcher.abandon(pending, _DROP_REASONS.get(exc.code))
            raise
        except asyncio.CancelledError:
            for pending in queued:
                batcher.abandon(pending, "disconnected")
            raise
        return [o.result for o in self.outcomes]

    async def _wait(self, queued: list[Pending]) -> list[Outcome]:
        watcher = asyncio.ensure_future(_disconnected(self.request))
        waiting = {p.future for p in queued}
        try:
            while waiting:
                remaining = self.deadline - time.monotonic()
                done, waiting = await asyncio.wait(waiting | {watcher}, timeout=max(0.0, remaining),
                                                   return_when=asyncio.FIRST_COMPLETED)
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

    def apply_headers(self, response: Response) -> None:
        spec = self.entry.spec
        response.headers["X-Model"] = spec.name
        if self.outcomes:
            response.headers["X-Queue-Time-Ms"] = f"{max(o.queue_s for o in self.outcomes) * 1000:.2f}"
            response.headers["X-Inference-Time-Ms"] = f"{max(o.inference_s for o in self.outcomes) * 1000:.2f}"
            response.headers["X-Batch-Size"] = str(max(o.batch_size for o in self.outcomes))
        if spec.random_weights:
            response.headers["X-Perceiver-Random-Weights"] = "true"


def prepare_each(values: Sequence[Any], prepare: Callable[[Any], Any], *, name: str = "inputs",
                 name_single: bool = False) -> list[Any]:
    """prepare(v) for each value; an error names the value (`inputs[2]: ...`), a lone value's only
    with `name_single` (the task routes' single input is not a list; a tensor's rows always are)."""
    items = []
    for i, value in enumerate(values):
        try:
            items.append(prepare(value))
        except ServeError as exc:
            if len(values) == 1 and not name_single:
                raise
            raise ServeError(exc.code, f"{name}[{i}]: {exc.message}", retry_after=exc.retry_after) from None
    return items


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON, as FastAPI's JSONResponse renders it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


async def json_answer(build: Callable[[], Any], *, entries: int) -> Response:
    """The JSON response of `build()`: built on a worker thread when it holds more than OFF_LOOP_ENTRIES
    entries (the limits have bounded it; the event loop stays free while it is built)."""
    if entries > OFF_LOOP_ENTRIES:
        content = await run_in_threadpool(lambda: json_bytes(build()))
    else:
        content = json_bytes(build())
    return Response(content, media_type="application/json")


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read; receive() then waits for disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class InferenceService:
    def __init__(self, *, registry: Registry, settings: Settings, offload: Offload | None = None) -> None:
        self.registry, self.settings = registry, settings
        self.limits = Limits.of(settings.server)
        self.offload = offload or Offload()  # parses large bodies away from the event loop
        # A decoded 64-megapixel image is ~200 MB: bound how many decode at once, whatever the load.
        self._decodes = anyio.CapacityLimiter(settings.server.max_concurrent_decodes or max(2, os.cpu_count() or 2))

    async def decode(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) on a worker thread, at most `max_concurrent_decodes` at a time (media decoding)."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._decodes)

    def check_inputs(self, count: int) -> None:
        self.limits.check_inputs(count)

    def check_texts(self, texts: Sequence[str]) -> None:
        """The count cap, then `max_text_bytes` per text (UTF-8), before any tokenizing."""
        self.check_inputs(len(texts))
        limit = self.settings.server.max_text_bytes
        for i, text in enumerate(texts):
            size = len(text) if len(text) > limit else len(text.encode("utf-8", "surrogatepass"))
            if size > limit:
                where = f"inputs[{i}]: " if len(texts) > 1 else ""
                raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE,
                                 f"{where}text is over {limit} bytes (UTF-8); split it or send it in several requests")

    @asynccontextmanager
    async def open(self, request: Request, task: Task, model: str | None) -> AsyncIterator[Call]:
        """The ready model of `task` named `model` (default when None), held for the block."""
        spec = self.registry.resolve(task, model)
        state = request.scope.setdefault("state", {})
        state[MODEL_KEY] = spec.name
        deadline = state.get(DEADLINE_KEY) or state.get(STARTED_KEY, time.monotonic()) + \
            self.settings.server.request_timeout_s
        try:
            entry = await asyncio.wait_for(self.registry.acquire(spec), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise ServeError(ErrorCode.TIMEOUT, f"model {spec.name!r} is still loading; retry shortly",
                             retry_after=5) from None
        entry.active += 1
        try:
            yield Call(request, entry, deadline, self)
        finally:
            entry.active -= 1
            entry.last_used = time.monotonic()
