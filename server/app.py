"""The app factory. Building an app touches no device; models load on first use or at preload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.errors import install_error_handlers
from server.lifecycle import Lifecycle
from server.loading import load_model
from server.metrics import Metrics
from server.middleware import RequestMiddleware
from server.registry import Loader, Registry
from server.routers import classify_image, classify_text, fill_mask, health, models
from server.serving import InferenceService
from server.settings import Settings

log = logging.getLogger(__name__)


def build_app(settings: Settings, *, loader: Loader = load_model) -> FastAPI:
    metrics = Metrics()
    registry = Registry(settings=settings, metrics=metrics, loader=loader)
    lifecycle = Lifecycle()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if any(spec.random_weights for spec in settings.models.values()):
            log.warning("RANDOM WEIGHTS: some models are randomly initialised; their answers are meaningless")
        lifecycle.preloading = bool(settings.server.preload)
        preload = asyncio.create_task(_preload(registry, lifecycle, settings.server.preload))
        lifecycle.started = True
        try:
            yield
        finally:
            lifecycle.begin_drain()
            preload.cancel()
            await registry.close()

    app = FastAPI(title="perceiver-serve", version="0.1.0", lifespan=lifespan,
                  summary="Inference server for the Perceiver IO model family")
    app.state.settings, app.state.metrics, app.state.registry = settings, metrics, registry
    app.state.lifecycle = lifecycle
    app.state.service = InferenceService(registry=registry, settings=settings)
    install_error_handlers(app)
    # Auth (a later release) goes here, as plain ASGI middleware inside RequestMiddleware.
    app.add_middleware(RequestMiddleware, metrics=metrics, max_body_bytes=int(settings.server.max_body_mb * 2**20))
    for router in (health.router, models.router, fill_mask.router, classify_text.router, classify_image.router):
        app.include_router(router)
    if settings.server.admin_api:
        app.include_router(models.admin)
    return app


async def _preload(registry: Registry, lifecycle: Lifecycle, names: list[str]) -> None:
    if not names:
        return
    lifecycle.preloading = True
    try:
        await registry.preload(names)
    finally:
        lifecycle.preloading = False
