"""Inference over the protocol, whatever the transport: which outputs a request asks for and how, its rows parsed and
checked before the model is touched, the call through the model's batcher (exactly as the task routes make it:
same batcher, limits, deadline and metrics), and the outputs as asked (classification applied).

HTTP (server/v2/rest.py) and gRPC (server/v2/grpc/) decode their messages into an `InferenceRequest` and tensors,
call `infer`, and encode the `Answer`; nothing else differs between them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from server.engine.serving import Call, InferenceService
from server.settings import ModelSpec
from server.v2.binary import Tensor
from server.v2.protocol import InferenceRequest
from server.v2.service import ADAPTERS
from server.v2.tensors import Options, TaskTensors, bad, classification

# Opens the call of a request: (the model, the timeout its body asked for in seconds, or None) -> the call.
Opener = Callable[[ModelSpec, float | None], AbstractAsyncContextManager[Call]]


@dataclass(frozen=True)
class Output:
    """One output as the request wants it back."""

    name: str
    binary: bool
    classification: int | None = None


@dataclass(frozen=True)
class Answer:
    model: str
    request_id: str | None
    outputs: list[tuple[Tensor, bool]]  # in the order asked; True: in the binary section
    call: Call


def wanted(adapter: TaskTensors, request: InferenceRequest, *, all_binary: bool = False) -> list[Output]:
    """The outputs asked for (every output when none is named), each binary or not and classified or not.
    `all_binary`: the transport sends every output raw (gRPC), whatever the request says."""
    known = [m.name for m in adapter.outputs(None)]
    default = bool(request.parameters.binary_data_output) or all_binary
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
        binary = default if asked.parameters.binary_data is None or all_binary else asked.parameters.binary_data
        outputs.append(Output(asked.name, binary, count))
    return outputs


def options_of(request: InferenceRequest, outputs: list[Output]) -> Options:
    params = request.parameters
    return Options(
        wanted=frozenset(o.name for o in outputs),
        top_k=params.top_k,
        function=params.function_to_apply,
        float_datatype=params.output_datatype or "FP32",
        binary=frozenset(o.name for o in outputs if o.binary),
        classification={o.name: o.classification for o in outputs if o.classification is not None},
    )


async def infer(
    service: InferenceService,
    spec: ModelSpec,
    request: InferenceRequest,
    inputs: Mapping[str, Tensor],
    open_call: Opener,
    *,
    all_binary: bool = False,
) -> Answer:
    """The answer of `spec` to `request` with its decoded `inputs`; every check that needs no model comes first."""
    adapter = ADAPTERS[spec.task]
    outputs = wanted(adapter, request, all_binary=all_binary)
    service.limits.check_inputs(max(t.shape[0] if t.shape else 1 for t in inputs.values()))  # before any file
    rows = await service.decode(adapter.parse, inputs, service.limits)  # file headers are checked here
    options = options_of(request, outputs)
    timeout_us = request.parameters.timeout
    async with open_call(spec, timeout_us / 1e6 if timeout_us else None) as call:
        tensors = await adapter.infer(call, rows, options)
    answered = await run_in_threadpool(_as_asked, adapter, call.runner, outputs, tensors)
    return Answer(spec.name, request.id, answered, call)


def _as_asked(
    adapter: TaskTensors, runner: object, outputs: list[Output], tensors: dict[str, Tensor]
) -> list[tuple[Tensor, bool]]:
    answered = []
    for output in outputs:
        tensor = tensors[output.name]
        if output.classification is not None:
            tensor = classification(tensor, output.classification, adapter.classes(runner, output.name))
        answered.append((tensor, output.binary))
    return answered
