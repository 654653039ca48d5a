"""The protocol over the server's models: names, versions, readiness, metadata, and the tensor adapter of each task.

Model names are configured names and aliases only (a source is never a name here). Each model has one version, "1".
Both transports (HTTP routes in server/v2/router.py, gRPC in server/v2/grpc/) answer from these.
"""

from __future__ import annotations

from server.engine.registry import ModelState, Registry
from server.errors import ErrorCode, ServeError
from server.settings import ModelSpec, Settings, Task
from server.v2.protocol import ModelMetadata, ServerMetadata
from server.v2.tensors import TaskTensors
from server.v2.text import FillMaskTensors, TextClassificationTensors
from server.v2.vision import ImageClassificationTensors, OpticalFlowTensors, VideoAutoencodingTensors

SERVER_NAME = "perceiver-serve"
VERSION = "1"
PLATFORM = "perceiver-io_pytorch"
# What is implemented, by Triton's names: tools check this list before they use an extension.
EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "parameters",
    "statistics",
]
ADAPTERS: dict[Task, TaskTensors] = {
    Task.FILL_MASK: FillMaskTensors(),
    Task.TEXT_CLASSIFICATION: TextClassificationTensors(),
    Task.IMAGE_CLASSIFICATION: ImageClassificationTensors(),
    Task.OPTICAL_FLOW: OpticalFlowTensors(),
    Task.VIDEO_AUTOENCODING: VideoAutoencodingTensors(),
}


def server_metadata(version: str) -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=version, extensions=EXTENSIONS)


def find_model(settings: Settings, name: str, version: str | None) -> ModelSpec:
    """The configured model `name` (a name or an alias); `version`, when given, must be its one version."""
    spec = settings.models.get(name)
    if spec is None:
        matches = [m for m in settings.models.values() if name in m.aliases]
        if len(matches) > 1:
            raise ServeError(
                ErrorCode.BAD_REQUEST,
                (f"{name!r} is an alias of several models ({', '.join(m.name for m in matches)}); use a model name"),
            )
        if not matches:
            raise ServeError(
                ErrorCode.UNKNOWN_MODEL,
                (f"no model named {name!r} (configured: {', '.join(settings.models) or 'none'})"),
            )
        spec = matches[0]
    if version and version != VERSION:
        raise ServeError(
            ErrorCode.UNKNOWN_MODEL, f"model {spec.name!r} has no version {version!r}; its only version is {VERSION!r}"
        )
    return spec


def not_ready(registry: Registry, name: str, version: str | None) -> str | None:
    """Why the model is not ready (None when it is); an unknown model is an error."""
    spec = find_model(registry.settings, name, version)
    entry = registry.entries[spec.name]
    if entry.state is ModelState.READY:
        return None
    why = f" ({entry.reason})" if entry.reason else ""
    return (
        f"model {spec.name!r} is {entry.state.value}{why}; it loads on its first inference request, at preload, "
        "or on a repository load request"
    )


def model_metadata(registry: Registry, name: str, version: str | None) -> ModelMetadata:
    """Exact dims once the model is loaded; before, the dims that depend on its checkpoint are -1."""
    spec = find_model(registry.settings, name, version)
    entry = registry.entries[spec.name]
    runner = entry.model.runner if entry.model is not None else None
    adapter = ADAPTERS[spec.task]
    return ModelMetadata(
        name=spec.name,
        versions=[VERSION],
        platform=PLATFORM,
        inputs=adapter.inputs(runner),
        outputs=adapter.outputs(runner),
        parameters={"task": spec.task.value, "status": entry.state.value},
    )
