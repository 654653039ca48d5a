"""The Open Inference Protocol (KServe v2) REST API, with Triton's binary tensor data and classification
extensions: tritonclient, KServe and perf_analyzer-style tools talk to every model here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from server.deps import LifecycleDep, RegistryDep, ServiceDep, SettingsDep
from server.errors import ErrorCode
from server.routers.health import DetailedDep, liveness_error, readiness_error
from server.v2 import service as v2
from server.v2.errors import V2Route, v2_responses
from server.v2.protocol import INFER_BODY, InferenceResponse, ModelMetadata, ServerMetadata

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], route_class=V2Route)
NameParam = Annotated[str, Path(max_length=256, description="A configured model name or alias")]
VersionParam = Annotated[str, Path(max_length=64, description=f"Every model has one version, {v2.VERSION!r}")]
MODEL_ERRORS = v2_responses(ErrorCode.UNKNOWN_MODEL, ErrorCode.BAD_REQUEST)
INFER_ERRORS = v2_responses(
    ErrorCode.BAD_REQUEST,
    ErrorCode.INVALID_INPUT,
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.UNKNOWN_MODEL,
    ErrorCode.OVERLOADED,
    ErrorCode.MODEL_UNAVAILABLE,
    ErrorCode.TIMEOUT,
)
OK = {200: {"description": "True (the body is empty)"}}
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


@router.get(
    "/models/{name}",
    response_model=ModelMetadata,
    responses=MODEL_ERRORS,
    summary="Model metadata: its input and output tensors",
)
async def model_metadata(registry: RegistryDep, name: NameParam) -> ModelMetadata:
    return v2.model_metadata(registry, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    responses=MODEL_ERRORS,
    summary="Model metadata of one version",
)
async def version_metadata(registry: RegistryDep, name: NameParam, version: VersionParam) -> ModelMetadata:
    return v2.model_metadata(registry, name, version)


@router.get(
    "/models/{name}/ready",
    response_class=Response,
    responses=READY_RESPONSES,
    summary="Model ready: 200 once loaded, 503 before (models load on first use or at preload)",
)
async def model_ready(registry: RegistryDep, name: NameParam) -> Response:
    v2.check_ready(registry, name, None)
    return Response()


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_class=Response,
    responses=READY_RESPONSES,
    summary="Model version ready",
)
async def version_ready(registry: RegistryDep, name: NameParam, version: VersionParam) -> Response:
    v2.check_ready(registry, name, version)
    return Response()


@router.post(
    "/models/{name}/infer",
    response_model=InferenceResponse,
    responses=INFER_ERRORS,
    openapi_extra=INFER_BODY,
    summary="Inference on named tensors (JSON, or JSON + binary tensor data)",
)
async def infer(request: Request, service: ServiceDep, name: NameParam) -> Response:
    return await v2.infer(request, service, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    responses=INFER_ERRORS,
    openapi_extra=INFER_BODY,
    summary="Inference on one model version",
)
async def version_infer(request: Request, service: ServiceDep, name: NameParam, version: VersionParam) -> Response:
    return await v2.infer(request, service, name, version)
