"""The tensor codec, checked against tritonclient's own encoders and decoders (and ml_dtypes for bfloat16)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable

import ml_dtypes
import numpy as np
import pytest
import torch
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor, triton_to_np_dtype

from server.app import build_app
from server.errors import ErrorCode, ServeError
from server.settings import Settings
from server.v2.binary import (
    NUMPY,
    Tensor,
    decode_binary,
    decode_json,
    decompress,
    encode_binary,
    encode_json,
    split_body,
)
from tests.server.support import open_client

NUMERIC = [d for d in NUMPY if d != "BF16"]


def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    values = np.arange(int(np.prod(shape))).reshape(shape) % 7 - 3
    if datatype == "BOOL":
        return values > 0
    if datatype.startswith("UINT"):
        values = np.abs(values)
    return values.astype(triton_to_np_dtype(datatype)) / (2 if datatype.startswith("FP") else 1)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_binary_round_trip_matches_numpy_bytes(datatype: str) -> None:
    array = _sample(datatype, (2, 3)).astype(triton_to_np_dtype(datatype))
    tensor = decode_binary("x", datatype, [2, 3], memoryview(array.tobytes()))
    assert tensor.array.dtype == NUMPY[datatype] and tensor.shape == [2, 3]
    np.testing.assert_array_equal(tensor.array, array)
    assert encode_binary(tensor) == array.tobytes()


def test_bytes_elements_are_length_prefixed_as_tritonclient_writes_them() -> None:
    values = np.array([b"", b"a", "é".encode(), bytes(range(256))], dtype=object).reshape(2, 2)
    raw = serialize_byte_tensor(values).item()
    tensor = decode_binary("x", "BYTES", [2, 2], memoryview(raw))
    assert tensor.binary and tensor.array.tolist() == values.tolist()
    assert encode_binary(tensor) == raw
    assert deserialize_bytes_tensor(encode_binary(tensor)).tolist() == values.reshape(-1).tolist()


def test_bf16_is_raw_bfloat16_as_ml_dtypes_reads_it() -> None:
    values = torch.tensor([[1.0, -2.5, 3.14159, 1e-3], [65504.0, -0.0, 0.1, 7.0]])
    tensor = Tensor.from_torch("y", values, "BF16")
    decoded = np.frombuffer(encode_binary(tensor), dtype=ml_dtypes.bfloat16).reshape(2, 4)
    np.testing.assert_array_equal(decoded.astype(np.float32), values.to(torch.bfloat16).float().numpy())
    assert (
        encode_json(tensor)
        == decoded.astype(np.float32).reshape(-1).tolist()
        == [1.0, -2.5, 3.140625, 0.00099945068359375, 65536.0, -0.0, 0.10009765625, 7.0]
    )
    assert torch.equal(tensor.to_torch(), values.to(torch.bfloat16))


def test_json_floats_are_exact() -> None:
    values = torch.tensor([0.1, 1 / 3, -123.456, 1e-30])
    for datatype, dtype in [("FP32", np.float32), ("FP16", np.float16), ("BF16", ml_dtypes.bfloat16)]:
        tensor = Tensor.from_torch("y", values, datatype)
        exact = tensor.to_torch().float().numpy()
        np.testing.assert_array_equal(np.array(encode_json(tensor), dtype=dtype).astype(np.float32), exact)
        assert encode_json(tensor) == exact.tolist()


def test_json_data_flat_or_nested() -> None:
    flat = decode_json("x", "INT64", [2, 2], [1, 2, 3, 4])
    nested = decode_json("x", "INT64", [2, 2], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(flat.array, nested.array)
    assert flat.array.dtype == np.int64 and not flat.binary
    strings = decode_json("t", "BYTES", [2, 1], [["é"], ["b"]])
    assert strings.array.tolist() == [["é".encode()], [b"b"]]
    pixels = decode_json("p", "FP32", [1, 2], [0.5, -1.25])
    assert pixels.array.dtype == np.float32 and pixels.array.tolist() == [[0.5, -1.25]]


@pytest.mark.parametrize(
    "datatype, shape, data, says",
    [
        ("INT64", [3], [1, 2], "has 3 elements"),
        ("INT64", [2], [1, 2.5], "integers"),
        ("INT8", [1], [300], "range"),
        ("FP32", [1], ["1.0"], "numbers"),
        ("FP32", [1], [True], "numbers"),
        ("BOOL", [1], [1], "true/false"),
        ("BYTES", [1], [3], "strings"),
    ],
)
def test_json_data_that_does_not_fit_is_refused(datatype: str, shape: list[int], data: list, says: str) -> None:
    with pytest.raises(ServeError) as info:
        decode_json("x", datatype, shape, data)
    assert info.value.code is ErrorCode.BAD_REQUEST and says in info.value.message


@pytest.mark.parametrize(
    "count, raw, says",
    [
        (3, b"\x01\x00\x00\x00a" + b"\x00\x00\x00\x00" + b"\x05\x00\x00", "ends inside element 2"),
        (2, b"\x01\x00\x00\x00a\x05\x00\x00\x00ab", "past the end"),
        (2, b"\x01\x00\x00\x00a\x01\x00\x00\x00bEXTRA", "bytes left"),
        (2**30, bytes(8), "cannot hold"),  # refused before anything of that size is allocated
    ],
)
def test_malformed_bytes_tensors_are_refused(count: int, raw: bytes, says: str) -> None:
    with pytest.raises(ServeError) as info:
        decode_binary("x", "BYTES", [count], memoryview(raw))
    assert says in info.value.message


def test_binary_size_must_match_the_shape() -> None:
    with pytest.raises(ServeError) as info:
        decode_binary("x", "FP32", [2, 2], memoryview(bytes(12)))
    assert "16 bytes" in info.value.message and "12" in info.value.message


def test_split_body() -> None:
    head, binary = split_body(b'{"a":1}XYZ', "7")
    assert head == b'{"a":1}' and bytes(binary) == b"XYZ"
    assert split_body(b'{"a":1}', None)[0] == b'{"a":1}'
    for bad in ("-1", "11", "seven"):
        with pytest.raises(ServeError) as info:
            split_body(b'{"a":1}XYZ', bad)
        assert info.value.code is ErrorCode.BAD_REQUEST


def test_decompress_gzip_and_deflate_within_the_limit() -> None:
    body = b'{"inputs": []}' * 10
    assert decompress(gzip.compress(body), "gzip", 1000) == body
    assert decompress(zlib.compress(body), "deflate", 1000) == body
    assert decompress(body, None, 1000) == body
    with pytest.raises(ServeError) as info:
        decompress(gzip.compress(bytes(10_000)), "gzip", 1000)  # a small body that inflates past the limit
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    with pytest.raises(ServeError) as info:
        decompress(body, "br", 1000)
    assert info.value.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE
    with pytest.raises(ServeError) as info:
        decompress(b"not gzip", "gzip", 1000)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_v2_values_outside_every_datatype_are_400() -> None:
    cases = [
        ("FP32", [3.5e38]),
        ("FP32", [10**39]),
        ("FP32", [10**400]),
        ("FP16", [65520.0]),
        ("BF16", [1e39]),
        ("FP64", [10**400]),
        ("FP64", [float("inf")]),
        ("FP32", [float("nan")]),
        ("INT8", [128]),
        ("UINT8", [-1]),
        ("INT64", [2**63]),
        ("UINT64", [2**64]),
        ("INT32", [-(2**31) - 1]),
        ("UINT16", [2**16]),
    ]
    for datatype, values in cases:
        with pytest.raises(ServeError) as info:
            decode_json("x", datatype, [1], values)
        assert info.value.status == 400 and "range" in info.value.message, (datatype, values)
    assert decode_json("x", "FP32", [1], [3.4028234e38]).array.tolist() == [np.finfo(np.float32).max]


@pytest.mark.parametrize(
    "shape",
    [
        [0, 2**31, 2**31, 2**31],
        [2**31, 2**31, 0],
        [2**16, 2**16, 2**16, 0],
        [2**31, 2**31],
        [0, 0, 2**31, 2**31, 2**31, 2**31, 2**31, 2**31],
    ],
)
def test_v2_shapes_past_the_element_limit_are_400_whatever_the_data(shape: list[int]) -> None:
    for datatype in ("FP32", "BYTES", "BOOL"):
        for call in (
            lambda: decode_binary("x", datatype, shape, memoryview(b"")),
            lambda: decode_json("x", datatype, shape, []),
        ):
            with pytest.raises(ServeError) as info:
                call()
            assert info.value.status == 400 and "elements" in info.value.message


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "BF16", "FP64"])
def test_huge_json_integers_in_float_tensors_are_400(datatype: str) -> None:
    for value in (10**309, -(10**400), 2**1024):
        with pytest.raises(ServeError) as info:
            decode_json("x", datatype, [2], [1.0, value])
        assert info.value.code is ErrorCode.BAD_REQUEST and datatype in info.value.message


@pytest.mark.anyio
async def test_v2_infer_answers_overflows_as_protocol_errors(make_settings: Callable[..., Settings]) -> None:
    """Through the route: 400 in the protocol's {"error": message} shape, for JSON data and binary shapes."""

    def infer_json(datatype: str, shape: list[int], data_literal: str) -> bytes:
        return (
            f'{{"inputs": [{{"name": "pixel_values", "datatype": "{datatype}", "shape": {json.dumps(shape)}, '
            f'"data": {data_literal}}}]}}'
        ).encode()

    binary_head = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixel_values",
                    "datatype": "FP32",
                    "shape": [0, 2**31, 2**31],
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    requests = [
        ({"content": infer_json("FP32", [1], "[1e39]")}, "range"),
        ({"content": infer_json("FP32", [1], "[" + "9" * 400 + "]")}, "range"),
        ({"content": infer_json("FP16", [2], "[1.0, 70000]")}, "range"),
        ({"content": infer_json("INT64", [1], "[" + "9" * 30 + "]")}, "range"),
        ({"content": infer_json("FP32", [0, 2147483648, 2147483648], "[]")}, "elements"),
        ({"content": binary_head, "headers": {"Inference-Header-Content-Length": str(len(binary_head))}}, "elements"),
    ]
    async with open_client(build_app(make_settings())) as client:
        for request, says in requests:
            headers = {"content-type": "application/json", **request.get("headers", {})}
            response = await client.post("/v2/models/conv/infer", content=request["content"], headers=headers)
            assert response.status_code == 400, response.text
            body = response.json()
            assert set(body) == {"error"} and says in body["error"], body
