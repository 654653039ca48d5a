"""Readiness and shutdown.

Ready (`/health/ready` 200) = started, the start-up preload finished, every preloaded model loaded (a failed
one is retried every `load_retry_s`, and readiness returns when it loads), and not draining. Draining starts
at the first SIGTERM: readiness answers 503 and new work requests are refused with 503 at once, while
requests already admitted run to completion.
"""

from __future__ import annotations

import asyncio
import logging

from server.registry import Registry

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, *, registry: Registry, preload: list[str], retry_s: float) -> None:
        self.registry, self.preload_names, self.retry_s = registry, list(preload), retry_s
        self.started = False
        self.preloading = bool(preload)
        self.draining = False

    def begin_drain(self) -> None:
        """Stop advertising readiness and refuse new work; requests already admitted finish."""
        if not self.draining:
            log.info("draining: /health/ready and new requests now answer 503; in-flight requests finish")
        self.draining = True

    def not_ready_reason(self) -> str | None:
        """Why the server should get no traffic now, or None when it is ready."""
        if self.draining:
            return "shutting down"
        if not self.started:
            return "starting up"
        if self.preloading:
            return "preloading models"
        failed = self.registry.failed(self.preload_names)
        if failed:
            models = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            return (f"preloaded model(s) failed to load, retried every {max(self.retry_s, 1.0):g}s: {models}")
        return None

    async def preload(self) -> None:
        """Load the preloaded models (readiness waits), then keep retrying any that failed."""
        if not self.preload_names:
            return
        try:
            await self.registry.preload(self.preload_names)
        finally:
            self.preloading = False
        while failed := self.registry.failed(self.preload_names):
            await asyncio.sleep(max(self.retry_s, 1.0))
            log.info("retrying preload of %s", ", ".join(failed))
            await self.registry.preload(list(failed))
