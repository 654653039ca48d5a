"""Model status, and (with `[server] admin_api = true`) load / unload."""

from __future__ import annotations

from fastapi import APIRouter

from server.deps import RegistryDep
from server.engine.registry import ModelInfo, ModelList
from server.errors import ErrorCode, ServeError, responses

router = APIRouter(tags=["models"])
admin = APIRouter(tags=["admin"])


@router.get("/v1/models", response_model=ModelList, summary="Configured models and their status")
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(models=registry.describe())


def _info(registry: RegistryDep, name: str) -> ModelInfo:
    if name not in registry.entries:
        raise ServeError(ErrorCode.UNKNOWN_MODEL, f"no model named {name!r}")
    return next(i for i in registry.describe() if i.name == name)


@admin.post(
    "/v1/models/{name}/load",
    response_model=ModelInfo,
    summary="Load a model now",
    responses=responses(ErrorCode.UNKNOWN_MODEL, ErrorCode.MODEL_UNAVAILABLE),
)
async def load(name: str, registry: RegistryDep) -> ModelInfo:
    _info(registry, name)
    await registry.acquire(registry.entries[name].spec)
    return _info(registry, name)


@admin.post(
    "/v1/models/{name}/unload",
    response_model=ModelInfo,
    summary="Unload a model (queued work finishes)",
    responses=responses(ErrorCode.UNKNOWN_MODEL),
)
async def unload(name: str, registry: RegistryDep) -> ModelInfo:
    _info(registry, name)
    await registry.unload(name)
    return _info(registry, name)
