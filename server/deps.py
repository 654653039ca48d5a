"""Annotated dependencies, one place: what routes may ask for."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Query, Request

from server.engine.jobs import Jobs
from server.engine.lifecycle import Lifecycle
from server.engine.metrics import Metrics
from server.engine.registry import Registry
from server.engine.serving import InferenceService
from server.http.scope import KEY_DIGEST_KEY
from server.settings import Settings


def _state(attribute: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency returning `app.state.<attribute>`. It is `async def` though it never awaits: FastAPI runs a
    plain `def` dependency in its threadpool, a thread hop (and a GIL hand-off with the model threads) on every
    request."""

    async def from_state(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    return from_state


async def _owner(request: Request) -> str | None:
    """The digest of the request's API key (None without keys): who owns the jobs it submits and may see them."""
    state: dict[str, Any] = request.scope.get("state") or {}
    return state.get(KEY_DIGEST_KEY)


ServiceDep = Annotated[InferenceService, Depends(_state("service"))]
JobsDep = Annotated[Jobs, Depends(_state("jobs"))]
RegistryDep = Annotated[Registry, Depends(_state("registry"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
LifecycleDep = Annotated[Lifecycle, Depends(_state("lifecycle"))]
SettingsDep = Annotated[Settings, Depends(_state("settings"))]
OwnerDep = Annotated[str | None, Depends(_owner)]
ModelParam = Annotated[
    str | None,
    Query(
        max_length=256, description="A configured model of this task (name, alias or source); default model if unset"
    ),
]
TopKParam = Annotated[int | None, Query(ge=1, le=1000, description="How many labels to return")]
