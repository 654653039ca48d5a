"""Probes and the Prometheus scrape.

The probes stay open without a key when API keys are configured, so then their bodies say only why (starting
up, preloading, a preloaded model failed to load, shutting down, a batcher stalled), never which model or what
error: a load error names file paths. The details go to the log and to the authenticated /v1/models. Without
keys the details stay in the body. /v2/health/* answer from the same verdicts, in the v2 error shape.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from server.deps import LifecycleDep, MetricsDep, RegistryDep, SettingsDep
from server.engine.lifecycle import Lifecycle
from server.engine.registry import Registry
from server.errors import ErrorCode, ServeError, error_response, responses
from server.settings import Settings

log = logging.getLogger(__name__)


class Health(BaseModel):
    """A probe's 200 body; every "no" is a 503 in the error shape, its message saying why."""

    status: Literal["ok"]


router = APIRouter(tags=["health"])


async def _detailed(request: Request) -> bool:
    return not getattr(request.app.state, "api_keys_configured", True)


DetailedDep = Annotated[bool, Depends(_detailed)]


def readiness_error(lifecycle: Lifecycle, *, detailed: bool) -> ServeError | None:
    """Why the server is not ready, as the probe answers it; None when ready."""
    not_ready = lifecycle.not_ready()
    if not_ready is None:
        return None
    reason = not_ready.detail if detailed else not_ready.because.value
    return ServeError(ErrorCode.NOT_READY, f"not ready: {reason}", retry_after=1)


def liveness_error(registry: Registry, settings: Settings, *, detailed: bool) -> ServeError | None:
    """Why the server is not live (a batcher made no progress for `stall_seconds`); None when live."""
    limit = settings.server.stall_seconds
    stuck = registry.stuck(limit)
    if not stuck:
        return None
    detail = f"no inference progress for over {limit:g}s on: {', '.join(stuck)}"
    log.warning("liveness fails: %s", detail)
    return ServeError(ErrorCode.UNHEALTHY, detail if detailed else "a batcher stalled: no inference progress")


@router.get(
    "/health/live",
    response_model=Health,
    summary="The process is up and every batcher makes progress",
    responses=responses(ErrorCode.UNHEALTHY),
)
async def live(registry: RegistryDep, settings: SettingsDep, detailed: DetailedDep) -> Response:
    error = liveness_error(registry, settings, detailed=detailed)
    return JSONResponse(Health(status="ok").model_dump()) if error is None else error_response(error)


@router.get(
    "/health/ready",
    response_model=Health,
    responses=responses(ErrorCode.NOT_READY),
    summary="Ready to serve: 503 while starting, while a preloaded model is failed, and while draining",
)
async def ready(lifecycle: LifecycleDep, detailed: DetailedDep) -> Response:
    error = readiness_error(lifecycle, detailed=detailed)
    return JSONResponse(Health(status="ok").model_dump()) if error is None else error_response(error)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
