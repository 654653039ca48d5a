"""The app factory. Building an app touches no device; models load on first use or at preload."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from server.engine.jobs import Executor, open_job_store
from server.engine.lifecycle import Lifecycle
from server.engine.loading import load_model
from server.engine.metrics import Metrics
from server.engine.registry import Loader, Registry
from server.engine.serving import InferenceService
from server.errors import install_error_handlers
from server.http.admission import AdmissionMiddleware
from server.http.auth import AuthMiddleware, KeyCheck, configured_keys, document_auth, public_paths
from server.http.middleware import RequestMiddleware
from server.http.offload import Offload
from server.http.random_weights import RandomWeightsMiddleware, random_weights_only
from server.limits import Limits
from server.observability.tracing import Tracing, from_environment
from server.routers import JOB_KINDS, SERVICE_ROUTERS, TASK_ROUTERS, models
from server.settings import Settings
from server.v2 import router as v2

log = logging.getLogger(__name__)


def build_app(settings: Settings, *, loader: Loader = load_model, tracing: Tracing | None = None) -> FastAPI:
    """The server's app. `tracing`: the spans' destination (default: as the OTEL_* environment variables say)."""
    tracing = tracing if tracing is not None else from_environment(os.environ)
    metrics = Metrics(settings)
    registry = Registry(settings=settings, metrics=metrics, loader=loader, tracing=tracing)
    api_keys = configured_keys(settings.server)  # SettingsError for an unreadable or malformed key file
    service = InferenceService(registry=registry, settings=settings)
    job_limits = Limits.of(settings.server).jobs
    executor = Executor(service, JOB_KINDS, unit_timeout_s=job_limits.unit_timeout_s)
    job_store = open_job_store(settings.server, job_limits, execute=executor, metrics=metrics)
    lifecycle = Lifecycle(
        registry=registry,
        preload=settings.server.preload,
        retry_s=settings.server.load_retry_s,
        jobs_problem=job_store.problem if settings.server.jobs_required else None,
    )
    offload = Offload()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if any(spec.random_weights for spec in settings.models.values()):
            log.warning("RANDOM WEIGHTS: some models are randomly initialised; their answers are meaningless")
        grpc = None
        if settings.server.grpc_port is not None:  # grpcio is imported only when gRPC is on
            from server.v2.grpc.server import start_grpc

            grpc = await start_grpc(
                service=app.state.service,
                lifecycle=lifecycle,
                metrics=metrics,
                keys=KeyCheck(api_keys),
                version=app.version,
            )
        lifecycle.start()
        job_store.start()
        try:
            yield
        finally:
            await lifecycle.stop()  # drains: gRPC refuses new calls too
            if grpc is not None:  # calls in flight finish within their deadlines
                await grpc.stop(grace_s=settings.server.shutdown_grace_s)
            await job_store.close()
            await registry.close()
            offload.close()
            tracing.shutdown()

    # /docs and /redoc with their scripts and styles served from the package: they work with no internet.
    app = FastAPIOffline(
        title="perceiver-serve",
        version="0.1.0",
        lifespan=lifespan,
        summary="Inference server for the Perceiver IO model family",
    )
    app.state.settings, app.state.metrics, app.state.registry = settings, metrics, registry
    app.state.lifecycle, app.state.jobs = lifecycle, job_store
    app.state.api_keys_configured = bool(api_keys)  # public probes then say only why, never what (health.py)
    app.state.service = service
    app.state.offload = offload
    install_error_handlers(app)
    # Outermost last: [RandomWeightsMiddleware ->] RequestMiddleware -> AuthMiddleware -> AdmissionMiddleware
    # -> routes.
    app.add_middleware(
        AdmissionMiddleware,
        max_json_depth=settings.server.max_json_depth,
        timeout_cap_s=settings.server.request_timeout_cap_s,
        offload=offload,
        tracing=tracing,
    )
    app.add_middleware(AuthMiddleware, keys=api_keys, public=public_paths(settings.server))
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        lifecycle=lifecycle,
        max_body_bytes=int(settings.server.max_body_mb * 2**20),
        body_timeout_s=settings.server.body_timeout_s,
        tracing=tracing,
        access_log=settings.server.access_log,
    )
    if random_weights_only(settings):  # the demo: every answer says so, errors included
        app.add_middleware(RandomWeightsMiddleware)
    for router in (*SERVICE_ROUTERS, *TASK_ROUTERS.values(), v2.router):
        app.include_router(router)
    v2_infer = [path for path in _paths(v2.router, "POST") if path.endswith("/infer")]
    metrics.initialise(
        settings.models.values(),
        {task: [*_paths(router, "POST"), *v2_infer] for task, router in TASK_ROUTERS.items()},
        job_kinds=[kind.name for kind in JOB_KINDS],
    )
    if settings.server.admin_api:
        app.include_router(models.admin)
    if api_keys:
        document_auth(app, public_paths(settings.server))
    return app


def _paths(router: APIRouter, method: str) -> list[str]:
    return [r.path for r in router.routes if isinstance(r, APIRoute) and method in (r.methods or ())]
