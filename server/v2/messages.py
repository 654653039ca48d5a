"""HTTP inference request body -> (request, named input tensors); output tensors -> response body.

CPU work (JSON and tensor decoding of bodies up to max_body_mb): call off the event loop.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from server.errors import ErrorCode, ServeError, describe_validation
from server.v2.binary import Tensor, decode_binary, decode_json, decompress, encode_binary, encode_json, split_body
from server.v2.protocol import InferenceRequest


def read_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, dict[str, Tensor]]:
    head, binary = split_body(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(head)
    except ValidationError as exc:
        raise ServeError(ErrorCode.BAD_REQUEST, f"invalid inference request: {describe_validation(exc)}") from None
    inputs: dict[str, Tensor] = {}
    offset = 0
    for spec in request.inputs:
        if spec.name in inputs:
            raise ServeError(ErrorCode.BAD_REQUEST, f"input {spec.name!r} is given twice")
        size = spec.parameters.binary_data_size
        if size is not None:
            if spec.data is not None:
                raise ServeError(ErrorCode.BAD_REQUEST, f"input {spec.name!r} has both data and binary_data_size")
            if offset + size > len(binary):
                raise ServeError(
                    ErrorCode.BAD_REQUEST,
                    (
                        f"input {spec.name!r}: binary_data_size {size} runs past the end of the binary section "
                        f"({len(binary)} bytes after the {len(head)}-byte JSON; is Inference-Header-Content-Length "
                        "set?)"
                    ),
                )
            inputs[spec.name] = decode_binary(spec.name, spec.datatype, spec.shape, binary[offset : offset + size])
            offset += size
        elif spec.data is None:
            raise ServeError(
                ErrorCode.BAD_REQUEST,
                (f"input {spec.name!r} has no data: give `data`, or parameters.binary_data_size and the bytes"),
            )
        else:
            inputs[spec.name] = decode_json(spec.name, spec.datatype, spec.shape, spec.data)
        if spec.parameters.content_type is not None:
            inputs[spec.name] = dataclasses.replace(inputs[spec.name], content_type=spec.parameters.content_type)
    if offset != len(binary):
        raise ServeError(ErrorCode.BAD_REQUEST, f"{len(binary) - offset} bytes follow the binary inputs")
    return request, inputs


def decode_body(
    body: bytes, encoding: str | None, header_length: str | None, *, max_body_bytes: int, max_rows: int
) -> tuple[InferenceRequest, dict[str, Tensor]]:
    """An inference request body as sent (gzip/deflate or not) -> (request without its JSON data, tensors), rows
    checked (`check_rows`). May run in the body-parsing helper process
    (server.http.offload): what it returns is small to hand back, numeric data as arrays, not lists."""
    request, inputs = read_request(decompress(body, encoding, max_body_bytes), header_length)
    check_rows(inputs, max_rows)
    for spec in request.inputs:
        spec.data = None  # decoded into `inputs`
    return request, inputs


def check_rows(inputs: Mapping[str, Tensor], max_rows: int) -> None:
    """Every BYTES input is one element per row (text, an encoded file): refuse one holding more than
    `max_rows` (max_inputs) elements before it is handed on."""
    for tensor in inputs.values():
        if tensor.datatype == "BYTES" and tensor.array.size > max_rows:
            raise ServeError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"{tensor.array.size} inputs in one request (rows of {tensor.name!r}); at most {max_rows} (max_inputs)",
            )


def write_response(
    model_name: str, version: str, request_id: str | None, outputs: Sequence[tuple[Tensor, bool]]
) -> tuple[bytes, int | None]:
    """(body, JSON length when binary outputs follow it, else None)."""
    described, chunks = [], []
    for tensor, binary in outputs:
        entry: dict[str, object] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary:
            raw = encode_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = encode_json(tensor)
        described.append(entry)
    header: dict[str, object] = {"model_name": model_name, "model_version": version}
    if request_id is not None:
        header["id"] = request_id
    header["outputs"] = described
    head = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)
