"""Annotated dependencies, one place: what routes may ask for."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from server.engine.jobs import JobStore
from server.engine.lifecycle import Lifecycle
from server.engine.metrics import Metrics
from server.engine.registry import Registry
from server.engine.serving import InferenceService
from server.settings import Settings


# The accessors are `async def` though they never await: FastAPI runs a plain `def` dependency in its
# threadpool, a thread hop (and a GIL hand-off with the model threads) on every request.
async def _service(request: Request) -> InferenceService:
    return request.app.state.service


async def _registry(request: Request) -> Registry:
    return request.app.state.registry


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def _lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


async def _jobs(request: Request) -> JobStore:
    return request.app.state.jobs


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[InferenceService, Depends(_service)]
JobsDep = Annotated[JobStore, Depends(_jobs)]
RegistryDep = Annotated[Registry, Depends(_registry)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
LifecycleDep = Annotated[Lifecycle, Depends(_lifecycle)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ModelParam = Annotated[
    str | None,
    Query(
        max_length=256, description="A configured model of this task (name, alias or source); default model if unset"
    ),
]
TopKParam = Annotated[int | None, Query(ge=1, le=1000, description="How many labels to return")]
