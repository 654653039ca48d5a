"""Readiness: started, preload finished, not draining. Liveness is the process answering at all."""

from __future__ import annotations

import logging

from server.schemas import Health

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self) -> None:
        self.started = False
        self.preloading = False
        self.draining = False

    def begin_drain(self) -> None:
        """Stop advertising readiness (load balancers move away); in-flight and new requests are still served."""
        if not self.draining:
            log.info("draining: /health/ready now answers 503")
        self.draining = True

    @property
    def ready(self) -> bool:
        return self.started and not self.preloading and not self.draining

    def health(self) -> Health:
        if self.draining:
            return Health(status="draining", detail="shutting down")
        if not self.started or self.preloading:
            return Health(status="starting", detail="preloading models" if self.preloading else "starting up")
        return Health(status="ok")
