"""The service's messages, and ModelInfer's messages <-> the protocol's request, tensors and answer.

The message classes are built from the compiled descriptor set next to the protos (protos/README.md), in a
descriptor pool of their own: tritonclient.grpc and the KServe SDK each register these same names in protobuf's
default pool, and a second registration of a name in one pool fails, so a server sharing protobuf's default pool
could not run in a process that imports either client (tests, in-process benchmarks, a KServe transformer).

Inputs arrive typed (`contents`) or raw (`raw_input_contents`, Triton's binary layout: BYTES elements each behind
a 4-byte length); outputs always go raw (`raw_output_contents`), which both clients read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from pydantic import ValidationError

from server.errors import ErrorCode, ServeError, describe_validation
from server.v2.binary import Tensor, decode_binary, decode_json, element_count, encode_binary
from server.v2.inference import Answer
from server.v2.protocol import InferenceRequest

PROTOS = Path(__file__).parent / "protos"
DESCRIPTOR_SET = PROTOS / "inference.binpb"
SERVICE_NAME = "inference.GRPCInferenceService"


def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    for file in files.file:  # dependencies first, as protoc writes them
        pool.AddSerializedFile(file.SerializeToString())
    return pool


POOL = _pool()
SERVICE = POOL.FindServiceByName(SERVICE_NAME)


def message_class(name: str) -> type[Message]:
    """The class of message `name` of the service's package (e.g. "ModelInferRequest")."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


def from_dict(name: str, value: Mapping[str, Any]) -> Message:
    """Message `name` from its JSON form (proto field names, as Triton's HTTP extensions answer)."""
    return json_format.ParseDict(value, message_class(name)(), ignore_unknown_fields=True)


def parameter_value(parameter: Message) -> Any:
    """The value an InferParameter (or ModelRepositoryParameter) holds, whichever its type; None when unset."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def parameters(entries: Mapping[str, Message]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in entries.items()}


# The typed `contents` field of each datatype (FP16 and BF16 have none: they travel raw).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _typed(tensor: Message) -> bool:
    return tensor.HasField("contents") and any(tensor.contents.ListFields())


def _from_contents(name: str, datatype: str, shape: list[int], contents: Message) -> Tensor:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: {datatype} data must be in raw_input_contents")
    values = list(getattr(contents, field))
    if datatype != "BYTES":  # numbers: checked (count, range) as JSON numbers are
        return dataclasses.replace(decode_json(name, datatype, shape, values), binary=True)
    count = element_count(name, datatype, shape)
    if len(values) != count:
        raise ServeError(
            ErrorCode.BAD_REQUEST, f"input {name!r}: shape {shape} has {count} elements, contents has {len(values)}"
        )
    return Tensor.raw_bytes(name, values, shape)


def read_request(request: Message) -> tuple[InferenceRequest, dict[str, Tensor]]:
    """A ModelInferRequest -> (the request without data, validated as an HTTP one is; the decoded tensors).
    CPU work: call off the event loop."""
    try:
        payload = InferenceRequest.model_validate(
            {
                "id": request.id or None,
                "parameters": parameters(request.parameters),
                "inputs": [
                    {
                        "name": t.name,
                        "shape": list(t.shape),
                        "datatype": t.datatype,
                        "parameters": parameters(t.parameters),
                    }
                    for t in request.inputs
                ],
                "outputs": [{"name": o.name, "parameters": parameters(o.parameters)} for o in request.outputs] or None,
            }
        )
    except ValidationError as exc:
        raise ServeError(ErrorCode.BAD_REQUEST, f"invalid inference request: {describe_validation(exc)}") from None
    return payload, _tensors(request, payload)


def _tensors(request: Message, payload: InferenceRequest) -> dict[str, Tensor]:
    """Raw contents go to the inputs in order: one each (Triton), or one each of those without typed contents
    (the KServe SDK sends numpy data raw and lists typed)."""
    raw = list(request.raw_input_contents)
    one_each = len(raw) == len(request.inputs)
    inputs: dict[str, Tensor] = {}
    for message, spec in zip(request.inputs, payload.inputs, strict=True):
        if spec.name in inputs:
            raise ServeError(ErrorCode.BAD_REQUEST, f"input {spec.name!r} is given twice")
        if _typed(message) and one_each:
            raise ServeError(ErrorCode.BAD_REQUEST, f"input {spec.name!r} has both contents and raw contents")
        if _typed(message):
            tensor = _from_contents(spec.name, spec.datatype, spec.shape, message.contents)
        elif raw:
            tensor = decode_binary(spec.name, spec.datatype, spec.shape, memoryview(raw.pop(0)))
        else:
            raise ServeError(
                ErrorCode.BAD_REQUEST, f"input {spec.name!r} has no data: give its contents or raw_input_contents"
            )
        if spec.parameters.content_type is not None:
            tensor = dataclasses.replace(tensor, content_type=spec.parameters.content_type)
        inputs[spec.name] = tensor
    if raw:
        raise ServeError(ErrorCode.BAD_REQUEST, f"{len(raw)} raw_input_contents more than the inputs that take them")
    return inputs


def write_response(answer: Answer, version: str) -> Message:
    """The answer as a ModelInferResponse, every output raw. CPU work: call off the event loop."""
    response = message_class("ModelInferResponse")(
        model_name=answer.model, model_version=version, id=answer.request_id or ""
    )
    for tensor, _binary in answer.outputs:
        output = response.outputs.add()
        output.name, output.datatype = tensor.name, tensor.datatype
        output.shape.extend(tensor.shape)
        response.raw_output_contents.append(encode_binary(tensor))
    return response
