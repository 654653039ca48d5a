"""Tensor data codec: JSON arrays and Triton's binary tensor data extension.

Binary tensor data is little-endian, row-major, without padding; BOOL is one byte; a BYTES element is a
4-byte little-endian length followed by that many bytes; BF16 is the raw 2-byte bfloat16. A body that
carries binary data is the JSON object (its length in the `Inference-Header-Content-Length` header)
followed by the binary tensors in the order the JSON lists them.

Arrays are numpy: BYTES as an object array of `bytes`, BF16 as uint16 bit patterns (numpy has no bfloat16).
CPU work: call off the event loop.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from server.errors import ErrorCode, ServeError

if TYPE_CHECKING:  # decoding needs numpy only: a body-parsing helper process never imports torch
    import torch

NUMPY: dict[str, np.dtype[Any]] = {
    name: np.dtype(t).newbyteorder("<")
    for name, t in {
        "BOOL": np.bool_,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
        "BF16": np.uint16,
    }.items()
}
_FLOATS = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
_LENGTH = struct.Struct("<I")
MAX_ELEMENTS = 2**30  # of one tensor: as many as a body of the largest max_body_mb (1 GiB) could carry


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray  # shape is the tensor's shape
    binary: bool = False  # arrived raw: the binary section, gRPC contents (BYTES: raw bytes, not JSON strings)
    content_type: str | None = None  # KServe's content type of its BYTES elements, as the request gives it

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)

    @classmethod
    def from_torch(cls, name: str, tensor: torch.Tensor, datatype: str) -> Tensor:
        """FP32/FP16/BF16/INT64 from a CPU tensor (BF16 rounded to nearest even, kept as bit patterns)."""
        import torch

        dtypes = {"FP32": torch.float32, "FP16": torch.float16, "BF16": torch.bfloat16, "INT64": torch.int64}
        converted = tensor.detach().to(dtypes[datatype]).contiguous()
        if datatype == "BF16":
            return cls(name, datatype, converted.view(torch.int16).numpy().view(np.uint16))
        return cls(name, datatype, converted.numpy())

    @classmethod
    def from_strings(cls, name: str, values: Sequence[Any], shape: Sequence[int]) -> Tensor:
        """A BYTES tensor of UTF-8 strings, row-major."""
        array = np.empty(len(values), dtype=object)
        array[:] = [v.encode() for v in values]
        return cls(name, "BYTES", array.reshape(shape))

    @classmethod
    def raw_bytes(cls, name: str, values: Sequence[bytes], shape: Sequence[int]) -> Tensor:
        """A BYTES tensor of raw elements (encoded files, or text as bytes), row-major."""
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return cls(name, "BYTES", array.reshape(shape), binary=True)

    def to_torch(self) -> torch.Tensor:
        import torch

        if self.datatype == "BF16":
            return torch.from_numpy(self.array.astype(np.int16, copy=True)).view(torch.bfloat16)
        return torch.from_numpy(np.array(self.array, dtype=self.array.dtype.newbyteorder("=")))


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON object, binary section) of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise ServeError(
            ErrorCode.BAD_REQUEST,
            f"Inference-Header-Content-Length is {header_length!r}; it must be "
            f"the length of the JSON object at the start of the {len(body)}-byte body",
        )
    return body[:length], memoryview(body)[length:]


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before `Content-Encoding` gzip or deflate, refusing more than `limit` bytes."""
    if not encoding or encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise ServeError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Encoding {encoding!r} is not supported; send the body uncompressed, gzip or deflate",
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ServeError(ErrorCode.BAD_REQUEST, f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"request body exceeds {limit} bytes once decompressed")
    return out


def element_count(name: str, datatype: str, shape: Sequence[int]) -> int:
    """Elements of a declared tensor, refused (400) before anything is allocated when the shape is not one a
    body can carry: an unknown datatype, a negative dim, or dims that multiply past MAX_ELEMENTS, zero dims
    counted as one (numpy refuses an array whose other dims overflow even when one dim is 0)."""
    if datatype not in NUMPY and datatype != "BYTES":
        raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: unknown datatype {datatype!r}")
    if any(d < 0 for d in shape):
        raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: shape {list(shape)} has a negative dim")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise ServeError(
            ErrorCode.BAD_REQUEST,
            f"input {name!r}: shape {list(shape)} is over the {MAX_ELEMENTS} elements a tensor may have",
        )
    return math.prod(shape)


def decode_binary(name: str, datatype: str, shape: Sequence[int], raw: memoryview) -> Tensor:
    count = element_count(name, datatype, shape)
    if datatype == "BYTES":
        return Tensor(name, datatype, _unpack_bytes(name, raw, count).reshape(shape), binary=True)
    expected = count * NUMPY[datatype].itemsize
    if len(raw) != expected:
        raise ServeError(
            ErrorCode.BAD_REQUEST,
            f"input {name!r}: {datatype} {list(shape)} is {expected} bytes, binary_data_size says {len(raw)}",
        )
    return Tensor(name, datatype, np.frombuffer(raw, dtype=NUMPY[datatype]).reshape(shape), binary=True)


def _unpack_bytes(name: str, raw: memoryview, count: int) -> np.ndarray:
    if count * 4 > len(raw):  # each element has at least its 4-byte length
        raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: {len(raw)} bytes cannot hold {count} BYTES elements")
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: binary data ends inside element {i} of {count}")
        (size,) = _LENGTH.unpack_from(raw, offset)
        if offset + 4 + size > len(raw):
            raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: element {i} claims {size} bytes past the end")
        out[i] = bytes(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    if offset != len(raw):
        raise ServeError(
            ErrorCode.BAD_REQUEST, f"input {name!r}: {len(raw) - offset} bytes left after {count} elements"
        )
    return out


def decode_json(name: str, datatype: str, shape: Sequence[int], data: list[Any]) -> Tensor:
    """Elements given flat or nested, row-major; numbers must fit the datatype (no silent truncation)."""
    count = element_count(name, datatype, shape)
    flat = _flatten(data)
    if len(flat) != count:
        raise ServeError(
            ErrorCode.BAD_REQUEST, f"input {name!r}: shape {list(shape)} has {count} elements, data has {len(flat)}"
        )
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: BYTES data must be JSON strings")
        array = np.empty(count, dtype=object)
        try:
            array[:] = [v.encode() for v in flat]
        except UnicodeEncodeError:
            raise ServeError(
                ErrorCode.BAD_REQUEST, f"input {name!r}: BYTES data must be valid Unicode strings"
            ) from None
        return Tensor(name, datatype, array.reshape(shape))
    return Tensor(name, datatype, _numbers(name, datatype, flat).reshape(shape))


def _numbers(name: str, datatype: str, flat: list[Any]) -> np.ndarray:
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: BOOL data must be true/false")
        return np.array(flat, dtype=np.bool_)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in flat):
        raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: {datatype} data must be JSON numbers")
    if datatype in ("FP16", "FP32", "FP64", "BF16"):
        return _floats(name, datatype, flat)
    if not all(isinstance(v, int) for v in flat):
        raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: {datatype} data must be integers")
    info = np.iinfo(NUMPY[datatype])
    if flat and not (info.min <= min(flat) and max(flat) <= info.max):
        raise ServeError(ErrorCode.BAD_REQUEST, f"input {name!r}: a value is outside the {datatype} range")
    return np.array(flat, dtype=NUMPY[datatype])


def _floats(name: str, datatype: str, flat: list[Any]) -> np.ndarray:
    """JSON numbers as `datatype`: each must be finite and stay finite in it (nothing rounds to infinity)."""
    outside = f"input {name!r}: a value is outside the finite {datatype} range"
    try:
        values = np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer past the double range
        raise ServeError(ErrorCode.BAD_REQUEST, outside) from None
    with np.errstate(over="ignore", invalid="ignore"):
        converted = bfloat16_bits(values) if datatype == "BF16" else values.astype(_FLOATS[datatype])
    finite = (converted & 0x7F80) != 0x7F80 if datatype == "BF16" else np.isfinite(converted)
    if not finite.all():
        raise ServeError(ErrorCode.BAD_REQUEST, outside)
    return converted


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float64 -> bfloat16 bit patterns (uint16), as torch converts: to float32, then its upper 16 bits rounded
    to the nearest, ties to even."""
    bits = values.astype(np.float32).view(np.uint32)
    upper, lower = bits >> 16, bits & 0xFFFF
    up = (lower > 0x8000) | ((lower == 0x8000) & (upper & 1 == 1))
    return (upper + up).astype(np.uint16)


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def encode_binary(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(v)) + v for v in tensor.array.reshape(-1))
    return np.ascontiguousarray(tensor.array, dtype=NUMPY[tensor.datatype]).tobytes()


def encode_json(tensor: Tensor) -> list[Any]:
    """Flat row-major elements: BYTES as UTF-8 strings, BF16 as the numbers its bits stand for. Floats are
    their exact values as JSON doubles (the binary section is the compact form)."""
    flat = tensor.array.reshape(-1)
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", errors="replace") for v in flat]
    if tensor.datatype == "BF16":
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    return flat.tolist()
