"""Probes and the Prometheus scrape."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from server.deps import LifecycleDep, MetricsDep, RegistryDep, SettingsDep
from server.errors import ErrorCode, error_payload, responses
from server.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=Health, summary="The process is up and every batcher makes progress",
            responses=responses(ErrorCode.UNHEALTHY))
async def live(registry: RegistryDep, settings: SettingsDep) -> Response:
    stuck = registry.stuck(settings.server.stall_seconds)
    if not stuck:
        return JSONResponse(Health(status="ok").model_dump())
    message = f"no inference progress for over {settings.server.stall_seconds:g}s on: {', '.join(stuck)}"
    return JSONResponse(error_payload(ErrorCode.UNHEALTHY, message), status_code=503)


@router.get("/health/ready", response_model=Health, responses=responses(ErrorCode.NOT_READY),
            summary="Ready to serve: 503 while starting, while a preloaded model is failed, and while draining")
async def ready(lifecycle: LifecycleDep) -> Response:
    reason = lifecycle.not_ready_reason()
    if reason is None:
        return JSONResponse(Health(status="ok").model_dump())
    body = error_payload(ErrorCode.NOT_READY, f"not ready: {reason}")
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
