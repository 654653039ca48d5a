"""The gRPC messages: the checked-in descriptor set is what the protos compile to, requests as tritonclient and the
KServe SDK build them decode, answers read back in tritonclient, and bad requests say what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult, service_pb2
from tritonclient.grpc._utils import _get_inference_request

from server.errors import ErrorCode, ServeError
from server.v2.binary import Tensor
from server.v2.grpc.messages import DESCRIPTOR_SET, PROTOS, message_class, read_request, write_response
from server.v2.inference import Answer


def ours(request: service_pb2.ModelInferRequest):  # the same bytes, parsed by the server's own classes
    return message_class("ModelInferRequest").FromString(request.SerializeToString())


def test_the_descriptor_set_is_what_the_protos_compile_to(tmp_path: Path) -> None:
    out = tmp_path / "inference.binpb"
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", "--include_imports"]
    subprocess.run([*command, f"--descriptor_set_out={out}", "grpc_service.proto"], check=True, timeout=120)
    assert out.read_bytes() == DESCRIPTOR_SET.read_bytes(), "run scripts/protos"


def test_a_tritonclient_request_decodes_alongside_tritonclients_own_classes() -> None:
    ids = InferInput("input_ids", [2, 3], "INT64").set_data_from_numpy(np.arange(6, dtype=np.int64).reshape(2, 3))
    text = InferInput("text", [2], "BYTES").set_data_from_numpy(np.array([b"a\x00b", "é".encode()], dtype=object))
    request = _get_inference_request(
        model_name="mlm",
        inputs=[ids, text],
        model_version="",
        request_id="r-1",
        outputs=[InferRequestedOutput("logits", class_count=2)],
        sequence_id=4,
        sequence_start=True,
        sequence_end=False,
        priority=2,
        timeout=300_000,
        parameters={"top_k": 3, "output_datatype": "FP16"},
    )
    payload, inputs = read_request(ours(request))
    params = payload.parameters
    assert (params.top_k, params.output_datatype, params.priority, params.timeout) == (3, "FP16", 2, 300_000)
    assert payload.id == "r-1" and payload.outputs[0].parameters.classification == 2
    assert inputs["input_ids"].array.tolist() == [[0, 1, 2], [3, 4, 5]] and inputs["input_ids"].binary
    assert inputs["text"].array.tolist() == [b"a\x00b", "é".encode()] and inputs["text"].binary


def test_typed_contents_and_raw_contents_mix_as_the_kserve_sdk_sends_them() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    typed = request.inputs.add(name="text", datatype="BYTES", shape=[2])
    typed.contents.bytes_contents.extend([b"hi", b"there"])
    typed.parameters["content_type"].string_param = "str"
    request.inputs.add(name="input_ids", datatype="INT64", shape=[1, 2])
    request.raw_input_contents.append(np.array([[4, 5]], dtype="<i8").tobytes())
    request.inputs.add(name="mask", datatype="INT32", shape=[2]).contents.int_contents.extend([1, 0])
    _, inputs = read_request(ours(request))
    assert inputs["text"].array.tolist() == [b"hi", b"there"] and inputs["text"].content_type == "str"
    assert inputs["input_ids"].array.tolist() == [[4, 5]]
    assert inputs["mask"].array.dtype == np.int32 and inputs["mask"].array.tolist() == [1, 0]


def _request(datatype: str = "FP32", raw: tuple[bytes, ...] = ()) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m", raw_input_contents=raw)
    request.inputs.add(name="x", datatype=datatype, shape=[2])
    return request


@pytest.mark.parametrize(
    "datatype, raw, says",
    [
        ("FP32", (), "has no data"),
        ("FP32", (bytes(8), bytes(8)), "raw_input_contents more than"),
        ("FP32", (bytes(5),), "is 8 bytes"),
        ("FP16", (), "has no data"),
    ],
)
def test_bad_requests_say_what_is_wrong(datatype: str, raw: tuple[bytes, ...], says: str) -> None:
    with pytest.raises(ServeError) as info:
        read_request(ours(_request(datatype, raw)))
    assert info.value.code is ErrorCode.BAD_REQUEST and says in info.value.message


def test_typed_fp16_contents_and_contents_with_raw_are_refused() -> None:
    request = _request("FP16")
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(ServeError, match="FP16 data must be in raw_input_contents"):
        read_request(ours(request))
    request = _request(raw=(bytes(8),))
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(ServeError, match="both contents and raw contents"):
        read_request(ours(request))
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    with pytest.raises(ServeError, match="outside the INT8 range"):
        read_request(ours(request))
    request = _request(raw=(bytes(8),))
    request.parameters["topk"].int64_param = 3
    with pytest.raises(ServeError, match="unknown request parameter"):
        read_request(ours(request))


def test_answers_read_back_in_tritonclient() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.25]])
    outputs = [
        (Tensor.from_torch("logits", logits, "BF16"), True),
        (Tensor.from_strings("labels", ["0.9:2:cat", "0.1:0:dog"], [1, 2]), True),
        (Tensor.from_torch("ids", torch.tensor([[7, -1]]), "INT64"), True),
    ]
    answer = Answer("conv", "req-9", outputs, call=None)  # type: ignore[arg-type]
    message = write_response(answer, "1")
    result = InferResult(service_pb2.ModelInferResponse.FromString(message.SerializeToString()))
    assert result.get_response().id == "req-9" and result.get_response().model_version == "1"
    assert result.as_numpy("logits").astype(np.float32).tolist() == [[0.5, -1.0, 2.25]]
    assert result.as_numpy("labels").tolist() == [[b"0.9:2:cat", b"0.1:0:dog"]]
    assert result.as_numpy("ids").tolist() == [[7, -1]]
