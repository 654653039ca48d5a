"""The Open Inference Protocol (KServe v2) REST API, with Triton's binary tensor data, classification, model
configuration, statistics and model repository extensions: tritonclient, the KServe SDK and Triton's tools talk
to every model here. Every error under /v2 is the protocol's `{"error": "message"}` (server.errors)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from server.deps import LifecycleDep, MetricsDep, RegistryDep, ServiceDep, SettingsDep
from server.errors import FILE_INPUT, SERVING, ErrorCode, ServeError, describe_validation, error_response
from server.http.scope import STARTED_KEY, TIMEOUT_KEY
from server.routers.health import DetailedDep, liveness_error, readiness_error
from server.v2 import repository, rest
from server.v2 import service as v2
from server.v2.config import model_config
from server.v2.errors import v2_responses
from server.v2.protocol import (
    INFER_BODY,
    InferenceResponse,
    ModelMetadata,
    RepositoryIndexRequest,
    RepositoryRequest,
    ServerMetadata,
)
from server.v2.statistics import model_statistics

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])
NameParam = Annotated[str, Path(max_length=256, description="A configured model name or alias")]
VersionParam = Annotated[str, Path(max_length=64, description=f"Every model has one version, {v2.VERSION!r}")]
MODEL_ERRORS = v2_responses(ErrorCode.UNKNOWN_MODEL, ErrorCode.BAD_REQUEST)
INFER_ERRORS = v2_responses(*FILE_INPUT, *SERVING)
E = TypeVar("E", bound=Callable[..., Any])
NOT_SO = 400  # the protocol: a health or readiness "no" is a 4xx, as Triton answers it (/health/* answer 503)
B = TypeVar("B", bound=BaseModel)


def _no(error: ServeError, request: Request) -> Response:
    return error_response(error, path=request.url.path, status=NOT_SO)


@router.get("", response_model=ServerMetadata, summary="Server metadata: name, version, protocol extensions")
async def server_metadata(request: Request) -> ServerMetadata:
    return v2.server_metadata(request.app.version)


@router.get(
    "/health/live",
    responses={200: {"description": '{"live": true}'}, **v2_responses(ErrorCode.BAD_REQUEST)},
    summary='Live: {"live": true}; 400 when a batcher makes no progress (as /health/live)',
)
async def live(request: Request, registry: RegistryDep, settings: SettingsDep, detailed: DetailedDep) -> Response:
    error = liveness_error(registry, settings, detailed=detailed)
    return JSONResponse({"live": True}) if error is None else _no(error, request)


@router.get(
    "/health/ready",
    responses={200: {"description": '{"ready": true}'}, **v2_responses(ErrorCode.BAD_REQUEST)},
    summary='Ready: {"ready": true}; 400 while starting, preloading, failed or draining (as /health/ready)',
)
async def ready(request: Request, lifecycle: LifecycleDep, detailed: DetailedDep) -> Response:
    error = readiness_error(lifecycle, detailed=detailed)
    return JSONResponse({"ready": True}) if error is None else _no(error, request)


@router.get("/models/stats", summary="Statistics of every model (Triton's statistics extension)")
async def all_statistics(settings: SettingsDep, metrics: MetricsDep) -> dict[str, Any]:
    return model_statistics(settings, metrics, None, None)


def _twins(method: str, path: str, *, summary: str, **options: Any) -> tuple[Callable[[E], E], Callable[[E], E]]:
    """The decorators of a model route at /models/{name}<path> and of its twin for one version."""
    return (
        router.api_route(f"/models/{{name}}{path}", methods=[method], summary=summary, **options),
        router.api_route(
            f"/models/{{name}}/versions/{{version}}{path}",
            methods=[method],
            summary=f"{summary} (one version)",
            **options,
        ),
    )


metadata, version_metadata = _twins(
    "GET", "", response_model=ModelMetadata, responses=MODEL_ERRORS, summary="Model metadata: its tensors"
)
ready_route, version_ready_route = _twins(
    "GET",
    "/ready",
    responses={200: {"description": '{"name": ..., "ready": true}'}, **MODEL_ERRORS},
    summary="Model ready: 200 once loaded, 400 before (models load on first use, at preload, or on a load request)",
)
infer_route, version_infer_route = _twins(
    "POST",
    "/infer",
    response_model=InferenceResponse,
    responses=INFER_ERRORS,
    openapi_extra=INFER_BODY,
    summary="Inference on named tensors (JSON, or JSON + binary tensor data)",
)
config_route, version_config_route = _twins(
    "GET", "/config", responses=MODEL_ERRORS, summary="Model configuration (Triton's JSON)"
)
stats_route, version_stats_route = _twins(
    "GET", "/stats", responses=MODEL_ERRORS, summary="Model statistics (Triton's JSON)"
)


@metadata
async def model_metadata(registry: RegistryDep, name: NameParam) -> ModelMetadata:
    return v2.model_metadata(registry, name, None)


@version_metadata
async def one_version_metadata(registry: RegistryDep, name: NameParam, version: VersionParam) -> ModelMetadata:
    return v2.model_metadata(registry, name, version)


def _model_ready(request: Request, registry: RegistryDep, name: str, version: str | None) -> Response:
    why = v2.not_ready(registry, name, version)
    if why is not None:
        return _no(ServeError(ErrorCode.MODEL_UNAVAILABLE, why), request)
    return JSONResponse({"name": v2.find_model(registry.settings, name, None).name, "ready": True})


@ready_route
async def model_ready(request: Request, registry: RegistryDep, name: NameParam) -> Response:
    return _model_ready(request, registry, name, None)


@version_ready_route
async def version_ready(request: Request, registry: RegistryDep, name: NameParam, version: VersionParam) -> Response:
    return _model_ready(request, registry, name, version)


@infer_route
async def infer(request: Request, service: ServiceDep, name: NameParam) -> Response:
    return await rest.infer(request, service, name, None)


@version_infer_route
async def version_infer(request: Request, service: ServiceDep, name: NameParam, version: VersionParam) -> Response:
    return await rest.infer(request, service, name, version)


@config_route
async def config(registry: RegistryDep, name: NameParam) -> dict[str, Any]:
    return model_config(registry, name, None)


@version_config_route
async def version_config(registry: RegistryDep, name: NameParam, version: VersionParam) -> dict[str, Any]:
    return model_config(registry, name, version)


@stats_route
async def statistics(settings: SettingsDep, metrics: MetricsDep, name: NameParam) -> dict[str, Any]:
    return model_statistics(settings, metrics, name, None)


@version_stats_route
async def version_statistics(
    settings: SettingsDep, metrics: MetricsDep, name: NameParam, version: VersionParam
) -> dict[str, Any]:
    return model_statistics(settings, metrics, name, version)


async def _body(request: Request, model: type[B]) -> B:
    """The JSON body as `model`; an empty body (tritonclient sends one) is `model()`."""
    raw = await request.body()
    try:
        return model.model_validate(json.loads(raw) if raw.strip() else {})
    except ValueError as exc:
        detail = describe_validation(exc) if isinstance(exc, ValidationError) else "body is not JSON"
        raise ServeError(ErrorCode.BAD_REQUEST, f"invalid repository request: {detail}") from None


@router.post(
    "/repository/index",
    responses=v2_responses(ErrorCode.BAD_REQUEST),
    summary='Every configured model: [{"name", "version", "state", "reason"}] ("ready": true: the ready ones)',
)
async def repository_index(request: Request, registry: RegistryDep) -> list[dict[str, str]]:
    body = await _body(request, RepositoryIndexRequest)
    return repository.index(registry, ready=bool(body.ready))


@router.post(
    "/repository/models/{name}/load",
    responses=v2_responses(ErrorCode.UNKNOWN_MODEL, ErrorCode.MODEL_UNAVAILABLE, ErrorCode.TIMEOUT),
    summary="Load a model now (what its first request does)",
)
async def repository_load(request: Request, service: ServiceDep, name: NameParam) -> Response:
    body = await _body(request, RepositoryRequest)
    state = request.scope.get("state", {})
    deadline = service.deadline(state.get(STARTED_KEY, time.monotonic()), state.get(TIMEOUT_KEY))
    await repository.load(service, name, body.parameters, deadline=deadline)
    return JSONResponse({})


@router.post(
    "/repository/models/{name}/unload",
    responses=v2_responses(ErrorCode.UNKNOWN_MODEL, ErrorCode.FORBIDDEN),
    summary="Unload a model (queued work finishes first); needs [server] admin_api = true",
)
async def repository_unload(request: Request, registry: RegistryDep, name: NameParam) -> Response:
    body = await _body(request, RepositoryRequest)
    await repository.unload(registry, name, body.parameters)
    return JSONResponse({})
