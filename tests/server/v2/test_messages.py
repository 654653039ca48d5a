"""Request bodies in, response bodies out; the bodies tritonclient writes and the ones it reads back."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import torch
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request

from server.errors import ErrorCode, ServeError
from server.v2.binary import Tensor
from server.v2.messages import read_request, write_response


def triton_body(
    inputs: list[InferInput],
    outputs: list[InferRequestedOutput] | None = None,
    *,
    scheduling: dict[str, object] | None = None,
    **parameters: object,
) -> tuple[bytes, str | None]:
    """The body tritonclient.http sends; `scheduling`: its sequence, priority and timeout arguments."""
    asked = {"sequence_id": 0, "sequence_start": False, "sequence_end": False, "priority": 0, "timeout": None}
    body, json_size = _get_inference_request(
        inputs=inputs,
        request_id="req-1",
        outputs=outputs,
        custom_parameters=parameters or None,
        **{**asked, **(scheduling or {})},
    )
    return body, None if json_size is None else str(json_size)


def test_the_protocol_parameters_tritonclient_and_kserve_send_are_accepted() -> None:
    text = InferInput("text", [1], "BYTES").set_data_from_numpy(np.array([b"a"], dtype=object))
    scheduling = {"sequence_id": 7, "sequence_start": True, "priority": 3, "timeout": 250_000}
    request, _ = read_request(*triton_body([text], scheduling=scheduling, top_k=2))
    params = request.parameters
    assert (params.priority, params.timeout, params.sequence_id, params.binary_data_output) == (3, 250_000, 7, True)
    kserve = (  # KServe's InferRequest.to_rest(): model_name, content types, headers
        b'{"id": "k", "model_name": "m", "parameters": {"content_type": "np", "headers": {"a": "b"}},'
        b' "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "str"},'
        b' "data": ["hi"]}], "outputs": [{"name": "labels", "parameters": {"binary_data": false}}]}'
    )
    request, inputs = read_request(kserve, None)
    assert request.parameters.content_type == "np" and inputs["text"].content_type == "str"


def test_binary_and_json_inputs_from_tritonclient() -> None:
    ids = InferInput("input_ids", [2, 3], "INT64").set_data_from_numpy(np.arange(6).reshape(2, 3))
    mask = InferInput("attention_mask", [2, 3], "INT64").set_data_from_numpy(
        np.ones((2, 3), np.int64), binary_data=False
    )
    text = InferInput("text", [2], "BYTES").set_data_from_numpy(np.array([b"a\x00b", "é".encode()], dtype=object))
    body, length = triton_body([ids, mask, text], [InferRequestedOutput("logits", class_count=2)], top_k=3)
    request, inputs = read_request(body, length)
    assert request.id == "req-1" and request.parameters.top_k == 3
    assert request.outputs[0].parameters.classification == 2 and request.outputs[0].parameters.binary_data
    assert inputs["input_ids"].binary and inputs["input_ids"].array.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert not inputs["attention_mask"].binary and inputs["attention_mask"].array.sum() == 6
    assert inputs["text"].array.tolist() == [b"a\x00b", "é".encode()]


X = b'{"name": "x", "shape": [1], "datatype": "FP32", '


@pytest.mark.parametrize(
    "head, tail, says",
    [
        (b"{not json", None, "invalid inference request"),
        (b'{"inputs": []}', None, "inputs"),
        (b'{"inputs": [' + X + b'"parameters": {}}]}', None, "has no data"),
        (
            b'{"inputs": [' + X + b'"data": [1], "parameters": {"binary_data_size": 4}}]}',
            bytes(4),
            "both data and binary_data_size",
        ),
        (b'{"inputs": [' + X + b'"parameters": {"binary_data_size": 4}}]}', bytes(2), "runs past the end"),
        (b'{"inputs": [' + X + b'"data": [1]}]}', b"tail", "4 bytes follow"),
        (b'{"inputs": [' + X + b'"data": [1]}, ' + X + b'"data": [2]}]}', None, "given twice"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}', None, "datatype"),
        (
            b'{"inputs": [' + X + b'"data": [1]}], "parameters": {"topk": 1}}',
            None,
            "unknown request parameter(s) topk; known: binary_data_output, timeout",
        ),
        (b'{"inputs": [' + X + b'"data": [1], "parameters": {"encoding": "x"}}]}', None, "unknown input parameter"),
        (
            b'{"inputs": [' + X + b'"data": [1], "parameters": {"shared_memory_region": "r"}}]}',
            None,
            "shared memory is not supported",
        ),
        (b'{"inputs": [' + X + b'"data": [1]}], "parameters": {"timeout": -1}}', None, "parameters.timeout"),
    ],
)
def test_malformed_requests_are_400_and_say_why(head: bytes, tail: bytes | None, says: str) -> None:
    length = None if tail is None else str(len(head))
    with pytest.raises(ServeError) as info:
        read_request(head + (tail or b""), length)
    assert info.value.code is ErrorCode.BAD_REQUEST and says in info.value.message


def test_responses_read_back_by_tritonclient() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.25]])
    outputs = [
        (Tensor.from_torch("logits", logits, "BF16"), True),
        (Tensor.from_strings("labels", ["0.9:2:cat", "0.1:0:dog"], [1, 2]), True),
        (Tensor.from_torch("scores", logits, "FP16"), False),
        (Tensor.from_torch("ids", torch.tensor([[7, -1]]), "INT64"), True),
    ]
    body, length = write_response("conv", "1", "req-9", outputs)
    result = InferResult.from_response_body(body, header_length=length)
    assert result.get_response()["id"] == "req-9" and result.get_response()["model_name"] == "conv"
    bf16 = result.as_numpy("logits")
    assert bf16.dtype == ml_dtypes.bfloat16 and bf16.astype(np.float32).tolist() == [[0.5, -1.0, 2.25]]
    assert result.as_numpy("labels").tolist() == [[b"0.9:2:cat", b"0.1:0:dog"]]
    assert result.as_numpy("scores").dtype == np.float16 and result.as_numpy("scores").tolist() == [[0.5, -1.0, 2.25]]
    assert result.as_numpy("ids").tolist() == [[7, -1]]


def test_json_only_response_has_no_header_length() -> None:
    body, length = write_response("m", "1", None, [(Tensor.from_torch("y", torch.tensor([1.5]), "FP32"), False)])
    assert length is None
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.5]}],
    }
