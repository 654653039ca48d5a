"""Parsing large request bodies where it costs the event loop nothing: in a helper process.

Parsing JSON, inflating base64 or scanning a body is CPU work proportional to the body (up to `max_body_mb`),
done by C code that holds the GIL throughout: on a worker thread it still stops the event loop (a 30 MB body
of small JSON values holds it for a quarter of a second, probes included). So a body is handled by size:

- up to INLINE_BYTES: on the event loop (a thread hop costs more than the work);
- up to PROCESS_BYTES: on a worker thread (a few milliseconds of GIL at most);
- larger: in one helper process, started on first use, which parses, validates against the route's limits and
  hands back only what the request turns into (a validated payload, decoded file bytes, numeric arrays), so
  taking the result back costs the event loop little.

The helper imports no model code (no torch): every function it runs lives in a module that needs only
numpy, pydantic and the server's error vocabulary. A helper that dies (out of memory, killed) is replaced on
the next large body; the request it was parsing gets 503.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from server.errors import ErrorCode, ServeError

log = logging.getLogger(__name__)
T = TypeVar("T")
INLINE_BYTES = 64 * 1024
PROCESS_BYTES = 1 << 20


class Offload:
    """Runs fn(body, *args) inline, on a thread or in the helper process, by the size of `body`."""

    def __init__(self, *, process_bytes: int = PROCESS_BYTES) -> None:
        self.process_bytes = process_bytes
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], body: bytes, *args: Any, cost: int | None = None, **kwargs: Any) -> T:
        """fn(body, *args, **kwargs), placed by `cost` (default: the body's size; a compressed body costs what it
        may inflate to). fn must be a module-level function of a torch-free module: the helper imports it."""
        cost = len(body) if cost is None else max(cost, len(body))
        if cost <= INLINE_BYTES:
            return fn(body, *args, **kwargs)
        if cost <= self.process_bytes:
            return await run_in_threadpool(fn, body, *args, **kwargs)
        pool = self._pool or self._start()
        try:
            return await asyncio.wrap_future(pool.submit(fn, body, *args, **kwargs))
        except BrokenProcessPool:
            log.warning("the body-parsing helper process died; a new one starts with the next large body")
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise ServeError(
                ErrorCode.MODEL_UNAVAILABLE, "the server could not parse this body now; retry", retry_after=1
            ) from None

    def _start(self) -> ProcessPoolExecutor:
        # spawn: a fresh interpreter (a fork would copy the models and the threads that hold their locks).
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
