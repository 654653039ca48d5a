"""The protocol over the server's models: names, readiness, metadata, and inference through the task batchers.

Model names are configured names and aliases only (a source is never a name here). Each model has one
version, "1". Inference opens the model with `InferenceService.open` and runs the task runner's items
through `call.infer`, exactly as the task routes do: same batcher, limits, deadline and metrics.
"""

from __future__ import annotations

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from server.engine.registry import ModelState, Registry
from server.engine.serving import InferenceService
from server.errors import ErrorCode, ServeError
from server.http.exchange import answer_headers, open_call
from server.settings import ModelSpec, Settings, Task
from server.v2.binary import Tensor
from server.v2.messages import Output, decode_body, write_response
from server.v2.protocol import HEADER_LENGTH, InferenceRequest, ModelMetadata
from server.v2.tensors import Options, TaskTensors, bad, classification
from server.v2.text import FillMaskTensors, TextClassificationTensors
from server.v2.vision import ImageClassificationTensors, OpticalFlowTensors, VideoAutoencodingTensors

VERSION = "1"
PLATFORM = "perceiver-io_pytorch"
EXTENSIONS = ["binary_tensor_data", "classification"]
ADAPTERS: dict[Task, TaskTensors] = {
    Task.FILL_MASK: FillMaskTensors(),
    Task.TEXT_CLASSIFICATION: TextClassificationTensors(),
    Task.IMAGE_CLASSIFICATION: ImageClassificationTensors(),
    Task.OPTICAL_FLOW: OpticalFlowTensors(),
    Task.VIDEO_AUTOENCODING: VideoAutoencodingTensors(),
}


def find_model(settings: Settings, name: str, version: str | None) -> ModelSpec:
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
    if version is not None and version != VERSION:
        raise ServeError(
            ErrorCode.UNKNOWN_MODEL, f"model {spec.name!r} has no version {version!r}; its only version is {VERSION!r}"
        )
    return spec


def check_ready(registry: Registry, name: str, version: str | None) -> None:
    spec = find_model(registry.settings, name, version)
    entry = registry.entries[spec.name]
    if entry.state is not ModelState.READY:
        why = f" ({entry.reason})" if entry.reason else ""
        raise ServeError(
            ErrorCode.MODEL_UNAVAILABLE,
            (f"model {spec.name!r} is {entry.state.value}{why}; it loads on its first inference request or at preload"),
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


def _outputs(adapter: TaskTensors, request: InferenceRequest) -> list[Output]:
    known = [m.name for m in adapter.outputs(None)]
    default = request.parameters.binary_data_output
    if request.outputs is None:
        return [Output(name, default) for name in known]
    outputs: list[Output] = []
    for asked in request.outputs:
        if asked.name not in known:
            raise bad(f"unknown output {asked.name!r}; this model's outputs: {', '.join(known)}")
        if any(o.name == asked.name for o in outputs):
            raise bad(f"output {asked.name!r} is requested twice")
        count = asked.parameters.classification
        if count is not None and asked.name not in adapter.classifiable:
            raise bad(
                f"classification applies to {', '.join(sorted(adapter.classifiable)) or 'no output'} "
                f"of this model, not {asked.name!r}"
            )
        binary = default if asked.parameters.binary_data is None else asked.parameters.binary_data
        outputs.append(Output(asked.name, binary, count))
    return outputs


async def infer(request: Request, service: InferenceService, name: str, version: str | None) -> Response:
    spec = find_model(service.settings, name, version)
    adapter = ADAPTERS[spec.task]
    body, headers = await request.body(), request.headers
    encoding = headers.get("content-encoding")
    payload, inputs = await request.app.state.offload.run(
        decode_body,
        body,
        encoding,
        headers.get(HEADER_LENGTH),
        max_body_bytes=service.limits.max_body_bytes,
        max_rows=service.limits.max_inputs,
        cost=None if encoding in (None, "identity") else service.limits.max_body_bytes,
    )
    outputs = _outputs(adapter, payload)
    service.limits.check_inputs(max(t.shape[0] if t.shape else 1 for t in inputs.values()))  # before any file
    rows = await service.decode(adapter.parse, inputs, service.limits)  # file headers are checked here
    params = payload.parameters
    options = Options(
        wanted=frozenset(o.name for o in outputs),
        top_k=params.top_k,
        function=params.function_to_apply,
        float_datatype=params.output_datatype,
        binary=frozenset(o.name for o in outputs if o.binary),
        classification={o.name: o.classification for o in outputs if o.classification is not None},
    )
    async with open_call(request, service, spec.task, spec.name) as call:
        tensors = await adapter.infer(call, rows, options)
    with call.step("encode"):
        content, json_length = await run_in_threadpool(
            _encode, adapter, call.runner, spec.name, payload.id, outputs, tensors
        )
    answered = answer_headers(call)
    if json_length is not None:
        answered[HEADER_LENGTH] = str(json_length)
    media = "application/json" if json_length is None else "application/octet-stream"
    return Response(content, media_type=media, headers=answered)


def _encode(
    adapter: TaskTensors,
    runner: object,
    model: str,
    request_id: str | None,
    outputs: list[Output],
    tensors: dict[str, Tensor],
) -> tuple[bytes, int | None]:
    answered = []
    for output in outputs:
        tensor = tensors[output.name]
        if output.classification is not None:
            tensor = classification(tensor, output.classification, adapter.classes(runner, output.name))
        answered.append((tensor, output.binary))
    return write_response(model, VERSION, request_id, answered)
