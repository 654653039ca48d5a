"""One HTTP exchange's use of the engine: its deadline and disconnect from the request, the headers and the JSON of
its answer."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from server.engine.serving import Call, InferenceService
from server.http.random_weights import HEADER as RANDOM_WEIGHTS
from server.http.scope import CALL_KEY, MODEL_KEY, STARTED_KEY, TIMEOUT_KEY
from server.observability import logs
from server.settings import Task

OFF_LOOP_ENTRIES = 256  # answers with more ranked entries than this are built on a worker thread


@asynccontextmanager
async def open_call(
    request: Request, service: InferenceService, task: Task, model: str | None, *, timeout_s: float | None = None
) -> AsyncIterator[Call]:
    """The model of `task` named `model` (the default when None) for this request: its deadline (arrival + the
    model's default deadline or request_timeout_s, or the earlier of X-Request-Timeout as admitted and `timeout_s`,
    the body's own timeout, within the cap), and items dropped if the client goes away."""
    spec = service.resolve(task, model)
    state = request.scope.setdefault("state", {})
    state[MODEL_KEY] = spec.name  # the metrics' label, whatever happens next
    context = logs.current()
    if context is not None:
        context.model = spec.name  # on every line logged from here on
    deadline = service.deadline(state.get(STARTED_KEY, time.monotonic()), state.get(TIMEOUT_KEY), timeout_s, spec=spec)
    async with service.open(spec, deadline=deadline, disconnected=functools.partial(_disconnected, request)) as call:
        state[CALL_KEY] = call
        yield call


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read; receive() then waits for the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


_TIMING_HEADERS = {
    "items": "X-Items",
    "queue_ms": "X-Queue-Time-Ms",
    "inference_ms": "X-Inference-Time-Ms",
    "inference_total_ms": "X-Inference-Total-Ms",
    "batch_size": "X-Batch-Size",
}


def answer_headers(call: Call) -> dict[str, str]:
    """The model that answered and what the request's items cost on it (docs/server.md, Routes): how many items
    (tiles, windows, passes), the longest any of them queued, the longest forward pass any of them ran in, those
    passes added up (each counted once), and the largest batch."""
    spec = call.entry.spec
    headers = {"X-Model": spec.name}
    for name, value in call.timing.figures().items():
        headers[_TIMING_HEADERS[name]] = f"{value:.2f}" if isinstance(value, float) else str(value)
    if spec.random_weights:
        headers[RANDOM_WEIGHTS] = "true"
    return headers


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON, as FastAPI's JSONResponse renders it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


async def json_answer(build: Callable[[], Any], *, entries: int, call: Call) -> Response:
    """The JSON response of `build()` with the call's headers: built on a worker thread when it holds more than
    OFF_LOOP_ENTRIES entries (the limits have bounded it; the event loop stays free while it is built)."""
    with call.service.tracing.step("encode", entries=entries):
        if entries > OFF_LOOP_ENTRIES:
            content = await run_in_threadpool(lambda: json_bytes(build()))
        else:
            content = json_bytes(build())
    return Response(content, media_type="application/json", headers=answer_headers(call))
