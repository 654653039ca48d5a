"""The model's own batched throughput, in this process, on the payloads the server is sent.

Runs the server's task runner as the batcher would, minus HTTP, queueing and threads: per item
decode + `prepare`, then `collate -> forward -> split` on full batches of `batch_size` items of
one `key` (the batcher's compatibility key), under `torch.inference_mode()`. Server throughput at
saturation divided by this is the server's efficiency (1.0 = no overhead).
"""

from __future__ import annotations

import base64
import gc
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import torch

from loadtest.payloads import Payload

# Routes whose payloads map to a runner item here (the server's own decode + prepare).
SUPPORTED = ("/fill-mask", "/classify-text", "/classify-image")
MIN_BATCHES = 3


@dataclass(frozen=True)
class InProcessResult:
    route: str
    model: str
    batch_size: int
    items: int
    elapsed_s: float
    prepare_s: float  # of elapsed_s: decoding and preparing items
    forward_s: float  # of elapsed_s: collate + forward + split
    threads: int  # torch intra-op threads (the server's setting)

    @property
    def items_per_s(self) -> float:
        return self.items / self.elapsed_s if self.elapsed_s else float("nan")


@asynccontextmanager
async def app_client(app: Any) -> AsyncIterator[Any]:
    """An httpx client of `app` in this process, its lifespan running (models load on first use, batchers stop at
    the end)."""
    import httpx

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process", timeout=None) as client:
            yield client


async def post_ok(client: Any, route: str, **kwargs: Any) -> Any:
    """POST `route`; anything but 200 is an error naming the route and the answer."""
    response = await client.post(route, **kwargs)
    if response.status_code != 200:
        raise RuntimeError(f"{route} answered {response.status_code}: {response.text[:300]}")
    return response


def _image_bytes(payload: Payload) -> bytes:
    if payload.files:
        return next(iter(payload.files.values()))[1]
    if payload.json is not None:
        return base64.b64decode(payload.json["inputs"])
    return payload.body or b""


def _preparer(route: str, runner: Any) -> Callable[[Payload], Any]:
    from server.limits import DEFAULT_LIMITS

    if route == "/fill-mask":
        return lambda p: runner.prepare(p.json["inputs"], max_masks=DEFAULT_LIMITS.max_masks_per_text)
    if route == "/classify-text":
        return lambda p: runner.prepare(p.json["inputs"])
    if route == "/classify-image":  # decoded and shrunk in one step, as the route does
        return lambda p: runner.prepare_file(_image_bytes(p), DEFAULT_LIMITS.image)
    raise ValueError(f"no in-process measurement for {route}; supported: {', '.join(SUPPORTED)}")


def measure(
    route: str,
    model: str,
    config: dict[str, Any],
    payloads: Sequence[Payload],
    *,
    batch_size: int,
    duration_s: float,
    max_items: int,
) -> InProcessResult:
    """Load `model` as the server would (`config` is the server's TOML table) and time full batches."""
    from server.engine.devices import cpu_threads
    from server.engine.loading import load_model
    from server.settings import build_settings

    settings = build_settings(config)
    loaded = load_model(settings.models[model], settings)
    runner = loaded.runner
    prepare = _preparer(route, runner)
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_threads(settings))  # as the server runs it
    try:
        with torch.inference_mode():
            return _time(
                route,
                model,
                runner,
                prepare,
                payloads,
                batch_size=batch_size,
                duration_s=duration_s,
                max_items=max_items,
            )
    finally:
        torch.set_num_threads(threads)
        del loaded, runner
        gc.collect()


def _time(
    route: str,
    model: str,
    runner: Any,
    prepare: Callable[[Payload], Any],
    payloads: Sequence[Payload],
    *,
    batch_size: int,
    duration_s: float,
    max_items: int,
) -> InProcessResult:
    def run(batch: list[Any]) -> None:
        runner.split(runner.forward(runner.collate(batch)), batch)

    run([prepare(payloads[0])] * batch_size)  # warm-up at the measured batch size
    groups: dict[Hashable, list[Any]] = {}
    items = 0
    prepare_s = forward_s = 0.0
    started = time.perf_counter()
    i = 0
    # At least MIN_BATCHES full batches (a single slow batch says little), then until the time is up.
    while items < max_items and (time.perf_counter() - started < duration_s or items < MIN_BATCHES * batch_size):
        t0 = time.perf_counter()
        item = prepare(payloads[i % len(payloads)])
        i += 1
        group = groups.setdefault(runner.key(item), [])
        group.append(item)
        t1 = time.perf_counter()
        prepare_s += t1 - t0
        if len(group) == batch_size:
            run(group)
            forward_s += time.perf_counter() - t1
            items += batch_size
            group.clear()
    # Items still waiting in partial groups were prepared but not run: their preparation is not counted.
    pending = sum(len(g) for g in groups.values())
    if i:
        prepare_s *= (i - pending) / i
    return InProcessResult(
        route, model, batch_size, items, prepare_s + forward_s, prepare_s, forward_s, torch.get_num_threads()
    )
