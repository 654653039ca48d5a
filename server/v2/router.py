"""The Open Inference Protocol (KServe v2) REST API, with Triton's binary tensor data and classification
extensions: tritonclient, KServe and perf_analyzer-style tools talk to every model here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Request, Response

from server.deps import LifecycleDep, RegistryDep, ServiceDep, SettingsDep
from server.errors import FILE_INPUT, SERVING, ErrorCode
from server.routers.health import DetailedDep, liveness_error, readiness_error
from server.v2 import service as v2
from server.v2.errors import V2Route, v2_responses
from server.v2.protocol import INFER_BODY, InferenceResponse, ModelMetadata, ServerMetadata

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], route_class=V2Route)
NameParam = Annotated[str, Path(max_length=256, description="A configured model name or alias")]
VersionParam = Annotated[str, Path(max_length=64, description=f"Every model has one version, {v2.VERSION!r}")]
MODEL_ERRORS = v2_responses(ErrorCode.UNKNOWN_MODEL, ErrorCode.BAD_REQUEST)
INFER_ERRORS = v2_responses(*FILE_INPUT, *SERVING)
E = TypeVar("E", bound=Callable[..., Any])
OK: dict[int | str, dict[str, Any]] = {200: {"description": "True (the body is empty)"}}
READY_RESPONSES = {**OK, **v2_responses(ErrorCode.UNKNOWN_MODEL, ErrorCode.MODEL_UNAVAILABLE)}


@router.get("", response_model=ServerMetadata, summary="Server metadata: name, version, protocol extensions")
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name="perceiver-serve", version=request.app.version, extensions=v2.EXTENSIONS)


@router.get(
    "/health/live",
    response_class=Response,
    responses={**OK, **v2_responses(ErrorCode.UNHEALTHY)},
    summary="Live (as /health/live): 200, or 503 when a batcher makes no progress",
)
async def live(registry: RegistryDep, settings: SettingsDep, detailed: DetailedDep) -> Response:
    error = liveness_error(registry, settings, detailed=detailed)
    if error is not None:
        raise error
    return Response()


@router.get(
    "/health/ready",
    response_class=Response,
    responses={**OK, **v2_responses(ErrorCode.NOT_READY)},
    summary="Ready (as /health/ready): 200, or 503 while starting, preloading, failed or draining",
)
async def ready(lifecycle: LifecycleDep, detailed: DetailedDep) -> Response:
    error = readiness_error(lifecycle, detailed=detailed)
    if error is not None:
        raise error
    return Response()


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
    "GET",
    "",
    response_model=ModelMetadata,
    responses=MODEL_ERRORS,
    summary="Model metadata: its input and output tensors",
)
ready_route, version_ready_route = _twins(
    "GET",
    "/ready",
    response_class=Response,
    responses=READY_RESPONSES,
    summary="Model ready: 200 once loaded, 503 before (models load on first use or at preload)",
)
infer_route, version_infer_route = _twins(
    "POST",
    "/infer",
    response_model=InferenceResponse,
    responses=INFER_ERRORS,
    openapi_extra=INFER_BODY,
    summary="Inference on named tensors (JSON, or JSON + binary tensor data)",
)


@metadata
async def model_metadata(registry: RegistryDep, name: NameParam) -> ModelMetadata:
    return v2.model_metadata(registry, name, None)


@version_metadata
async def one_version_metadata(registry: RegistryDep, name: NameParam, version: VersionParam) -> ModelMetadata:
    return v2.model_metadata(registry, name, version)


@ready_route
async def model_ready(registry: RegistryDep, name: NameParam) -> Response:
    v2.check_ready(registry, name, None)
    return Response()


@version_ready_route
async def version_ready(registry: RegistryDep, name: NameParam, version: VersionParam) -> Response:
    v2.check_ready(registry, name, version)
    return Response()


@infer_route
async def infer(request: Request, service: ServiceDep, name: NameParam) -> Response:
    return await v2.infer(request, service, name, None)


@version_infer_route
async def version_infer(request: Request, service: ServiceDep, name: NameParam, version: VersionParam) -> Response:
    return await v2.infer(request, service, name, version)
