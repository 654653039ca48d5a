"""The tensor codec, checked against tritonclient's own encoders and decoders (and ml_dtypes for bfloat16)."""

from __future__ import annotations

import gzip
import zlib

import ml_dtypes
import numpy as np
import pytest
import torch
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor, triton_to_np_dtype

from server.errors import ErrorCode, ServeError
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
    assert encode_json(tensor) == decoded.astype(np.float32).reshape(-1).tolist() == [
        1.0, -2.5, 3.140625, 0.00099945068359375, 65536.0, -0.0, 0.10009765625, 7.0]
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


@pytest.mark.parametrize("datatype, shape, data, says", [
    ("INT64", [3], [1, 2], "has 3 elements"),
    ("INT64", [2], [1, 2.5], "integers"),
    ("INT8", [1], [300], "range"),
    ("FP32", [1], ["1.0"], "numbers"),
    ("FP32", [1], [True], "numbers"),
    ("BOOL", [1], [1], "true/false"),
    ("BYTES", [1], [3], "strings"),
])
def test_json_data_that_does_not_fit_is_refused(datatype: str, shape: list[int], data: list, says: str) -> None:
    with pytest.raises(ServeError) as info:
        decode_json("x", datatype, shape, data)
    assert info.value.code is ErrorCode.BAD_REQUEST and says in info.value.message


@pytest.mark.parametrize("count, raw, says", [
    (3, b"\x01\x00\x00\x00a" + b"\x00\x00\x00\x00" + b"\x05\x00\x00", "ends inside element 2"),
    (2, b"\x01\x00\x00\x00a\x05\x00\x00\x00ab", "past the end"),
    (2, b"\x01\x00\x00\x00a\x01\x00\x00\x00bEXTRA", "bytes left"),
    (2**30, bytes(8), "cannot hold"),  # refused before anything of that size is allocated
])
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
