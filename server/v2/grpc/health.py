"""`grpc.health.v1.Health` for Kubernetes gRPC probes and load balancers, from the verdicts of /health/*:

| service | SERVING when |
|---|---|
| "" (the server), "inference.GRPCInferenceService" | ready (/health/ready): started, preloaded, not draining |
| "liveness" | live (/health/live): every batcher makes progress |

Check answers from the verdict of the moment; Watch streams the changes, refreshed every REFRESH_S.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpc_health.v1 import health, health_pb2

from server.engine.lifecycle import Lifecycle
from server.engine.registry import Registry
from server.routers.health import liveness_error
from server.settings import Settings
from server.v2.grpc.messages import SERVICE_NAME

LIVENESS = "liveness"
REFRESH_S = 5.0  # a stalled batcher logs a warning at each look: not every second
_SERVING, _NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class Health(health.aio.HealthServicer):
    def __init__(self, *, lifecycle: Lifecycle, registry: Registry, settings: Settings) -> None:
        super().__init__()
        self.lifecycle, self.registry, self.settings = lifecycle, registry, settings
        self._refresher: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        ready = _SERVING if self.lifecycle.not_ready() is None else _NOT_SERVING
        live = _SERVING if liveness_error(self.registry, self.settings, detailed=False) is None else _NOT_SERVING
        for service, status in (("", ready), (SERVICE_NAME, ready), (LIVENESS, live)):
            await self.set(service, status)

    async def Check(self, request: Any, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)

    def start(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever(), name="grpc-health")

    async def stop(self) -> None:
        await self.enter_graceful_shutdown()
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(REFRESH_S)
