"""Readiness and shutdown.

Ready (`/health/ready` 200) = started, the start-up preload finished, every preloaded model loaded, and not
draining. A supervisor lives as long as the app: a preloaded model whose load failed, at start-up or on a later
reload (after an unload or an eviction), is retried every `load_retry_s`, so readiness comes back by itself; a
load balancer that sees 503 sends no request that could fix it. Draining starts at the first SIGTERM: readiness
answers 503 and new work requests are refused with 503 at once, while requests already admitted run to
completion. With `jobs_required`, a job store that cannot be reached is not ready too (otherwise only job routes
answer 503, and synchronous traffic keeps flowing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from server.engine.registry import Registry

log = logging.getLogger(__name__)
MIN_RETRY_S = 1.0  # the supervisor never retries more often than this, whatever load_retry_s says
_EARLY_S = 0.05  # a timer may wake a little early: a retry due this soon is due


class NotReadyBecause(StrEnum):
    """Why the server should get no traffic: what a public probe may say (no model, path or error)."""

    DRAINING = "shutting down"
    STARTING = "starting up"
    PRELOADING = "preloading models"
    PRELOAD_FAILED = "a preloaded model failed to load"
    JOBS_UNAVAILABLE = "the job store cannot be reached"


@dataclass(frozen=True)
class NotReady:
    because: NotReadyBecause
    detail: str  # for operators: may name models and their load errors (file paths included)


class Lifecycle:
    def __init__(
        self,
        *,
        registry: Registry,
        preload: list[str],
        retry_s: float,
        jobs_problem: Callable[[], str | None] | None = None,
    ) -> None:
        self.registry, self.preload_names = registry, list(preload)
        self.jobs_problem = jobs_problem  # set when jobs are required: why the job store cannot be used
        self.retry_s, self.retry_every_s = retry_s, max(retry_s, MIN_RETRY_S)
        self.started = False
        self.preloading = bool(preload)
        self.draining = False
        self._drain_started: float | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._retrying: dict[str, str] = {}  # failed preloaded models being retried, with their last error

    def start(self) -> None:
        """The app is up: preload, then keep the preloaded models loaded, in the background."""
        if self.preload_names:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="preload-supervisor")
        self.started = True

    async def stop(self) -> None:
        """Drain, and stop the supervisor (a load it started may still finish in its thread)."""
        self.begin_drain()
        if self._drain_started is not None:
            took = time.monotonic() - self._drain_started
            log.info(
                "drain finished after %.1fs: no request in flight; stopping", took, extra={"duration_s": round(took, 3)}
            )
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def begin_drain(self) -> None:
        """Stop advertising readiness and refuse new work; requests already admitted finish."""
        if not self.draining:
            log.info("draining: /health/ready and new requests now answer 503; in-flight requests finish")
            self._drain_started = time.monotonic()
        self.draining = True

    def not_ready(self) -> NotReady | None:
        """Why the server should get no traffic now, or None when it is ready."""
        if self.draining:
            return NotReady(NotReadyBecause.DRAINING, "shutting down")
        if not self.started:
            return NotReady(NotReadyBecause.STARTING, "starting up")
        if self.preloading:
            return NotReady(NotReadyBecause.PRELOADING, "preloading models")
        failed = {**self._retrying, **self.registry.failed(self.preload_names)}  # no 200 while a retry runs
        if failed:
            models = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            return NotReady(
                NotReadyBecause.PRELOAD_FAILED,
                f"preloaded model(s) failed to load, retried every {self.retry_every_s:g}s: {models}",
            )
        jobs = self.jobs_problem() if self.jobs_problem is not None else None
        if jobs is not None:
            return NotReady(NotReadyBecause.JOBS_UNAVAILABLE, jobs)
        return None

    async def _supervise(self) -> None:
        try:
            await self.registry.preload(self.preload_names)
        except Exception:
            log.exception("preload failed; the supervisor retries")
        finally:
            self.preloading = False
        while True:
            await asyncio.sleep(self._next_retry_in())
            try:
                await self._retry_failed()
            except Exception:  # the supervisor outlives any one attempt
                log.exception("preload supervisor: a retry failed; trying again in %gs", self.retry_every_s)

    def _next_retry_in(self) -> float:
        """Until the earliest failed preloaded model may be retried (a failed load waits `load_retry_s`,
        whoever tried it), at least MIN_RETRY_S; `retry_every_s` when none has failed."""
        now, entries = time.monotonic(), self.registry.entries
        due = [entries[n].failed_at + self.retry_s - now for n in self.registry.failed(self.preload_names)]
        return max(min(due, default=self.retry_every_s), MIN_RETRY_S)

    async def _retry_failed(self) -> None:
        now, entries, failed = time.monotonic(), self.registry.entries, self.registry.failed(self.preload_names)
        due = {n: reason for n, reason in failed.items() if entries[n].failed_at + self.retry_s <= now + _EARLY_S}
        if not due:
            return
        log.info("retrying the load of preloaded model(s) %s", ", ".join(due))
        self._retrying = due
        try:
            await self.registry.preload(list(due))
        finally:
            self._retrying = {}
