"""Load one configured model (in a worker thread): locate its files, place it, build its task runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from server.engine.devices import resolve_device, resolve_dtype
from server.errors import ErrorCode, ServeError
from server.limits import Limits
from server.models.hub import is_hub_id, locate
from server.settings import ModelSpec, Settings
from server.tasks import Placement, TaskRunner, make_runner


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    module: torch.nn.Module
    runner: TaskRunner
    device: torch.device
    dtype: torch.dtype
    parameter_bytes: int
    folder: Path


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def load_model(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """Blocking. Raises ServeError(MODEL_UNAVAILABLE) with a message that says what to fix."""
    from model_core import CheckpointError, CheckpointNotFoundError, load_pretrained

    folder = locate(spec)
    device = resolve_device(spec.device or settings.server.device)
    dtype = resolve_dtype(spec.dtype or settings.server.dtype, device)
    try:
        module = load_pretrained(str(folder), device=device, dtype=dtype)
    except CheckpointNotFoundError as exc:
        hint = f" Run `perceiver-serve download {spec.name}` to fetch its files." if is_hub_id(spec.source) else ""
        raise ServeError(ErrorCode.MODEL_UNAVAILABLE, f"model {spec.name!r}: {exc}.{hint}") from exc
    except CheckpointError as exc:
        raise ServeError(ErrorCode.MODEL_UNAVAILABLE, f"model {spec.name!r}: bad checkpoint: {exc}") from exc
    if module.task != spec.task:
        raise ServeError(
            ErrorCode.MODEL_UNAVAILABLE,
            (
                f"model {spec.name!r}: {spec.source} is a {module.task} checkpoint "
                f"but is configured with task = {spec.task.value!r}"
            ),
        )
    runner = make_runner(spec.task, module, Placement(device, dtype, folder, Limits.of(settings.server)))
    size = parameter_bytes(module)
    return LoadedModel(spec, module, runner, device, dtype, size, folder)
