"""The decoders themselves under mutated input: valid seed files with bytes flipped, overwritten with boundary
values, inserted, deleted, truncated, or spliced from another seed's header; random /v2 tensors and bodies.

Property: a decoder returns or raises `ServeError`, nothing else, and its call stays within a memory bound
(peak resident memory of the process during the call; the limits are set small so the bound means something).
Deterministic (derandomized) and sized to run in seconds; PERCEIVER_FUZZ_EXAMPLES=2000 for a longer hunt."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import soundfile
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

from server import media
from server.errors import ServeError
from server.http.bodies import decode_base64, parse_json
from server.http.schemas import ClassifyImageRequest, FillMaskRequest
from server.limits import AudioLimits, ImageLimits, VideoLimits
from server.media.image import decode_image
from server.v2.binary import NUMPY, decode_binary, decode_json
from server.v2.messages import read_request
from tests.server.crafted import npy_file, peak_rss_growth, video_file, wav_claiming

EXAMPLES = int(os.environ.get("PERCEIVER_FUZZ_EXAMPLES", "400"))
MEMORY_BOUND = 32 * 2**20  # bytes of peak growth one call may cost at the small limits below
VIDEO = VideoLimits(max_frames=16, max_frame_pixels=128 * 128, max_array_bytes=2**20, containers=("mp4", "webm", "avi"))
AUDIO = AudioLimits(max_seconds=10.0, max_sample_rate=192_000, max_channels=8, formats=("WAV", "FLAC", "OGG"))
IMAGE = ImageLimits(max_pixels=2**20, formats=("PNG", "JPEG", "GIF", "WEBP", "BMP"))
DATATYPES = [*NUMPY, "BYTES"]


def fuzz(examples: int = EXAMPLES) -> Callable[[Any], Any]:
    return hypothesis_settings(
        max_examples=examples, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )


def only_serve_errors(call: Callable[[], Any]) -> None:
    """call() returns or raises ServeError, within MEMORY_BOUND of peak growth."""
    with peak_rss_growth() as growth, contextlib.suppress(ServeError):
        call()
    assert growth[0] < MEMORY_BOUND, f"the call grew the process by {growth[0] / 2**20:.0f} MB"


# ------------------------------------------------------------------------------------ seeds and mutations


def _frames(count: int = 3, side: int = 24) -> np.ndarray:
    t, y, x = np.meshgrid(np.arange(count), np.arange(side), np.arange(side), indexing="ij")
    return np.stack([x * 10, y * 10, t * 60 + x], axis=-1).astype(np.uint8)


def _npz(compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, video=_frames())
    return buffer.getvalue()


def _sound(fmt: str, subtype: str | None = None, channels: int = 1, rate: int = 44_100) -> bytes:
    samples = (0.3 * np.sin(np.arange(2048 * channels) / 5)).reshape(-1, channels).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _image(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@cache
def video_seeds() -> dict[str, bytes]:
    return {
        "npy": npy_file(_frames()),
        "npz": _npz(False),
        "npz-deflate": _npz(True),
        **{fmt: video_file(fmt, _frames()) for fmt in ("mp4", "webm", "avi")},
    }


@cache
def audio_seeds() -> dict[str, bytes]:
    return {
        "wav": _sound("WAV", "PCM_16", 2),
        "wav-float": _sound("WAV", "FLOAT"),
        "wav-extensible": wav_claiming(22_050, 2, frames=512, extensible=True),
        "flac": _sound("FLAC", channels=2),
        "ogg": _sound("OGG"),
    }


@cache
def image_seeds() -> dict[str, bytes]:
    return {fmt: _image(fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP")}


BOUNDARIES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    """A seed with 1-4 mutations, half of them aimed at the 64 bytes after its magic (where the headers are)."""
    names = sorted(seeds)
    data = bytearray(seeds[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        at = draw(st.integers(min(12, size), min(76, size)) | st.integers(0, size))
        kind = draw(st.sampled_from(["flip", "boundary", "insert", "delete", "truncate", "splice"]))
        if kind == "flip" and at < size:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "boundary":
            width, order = draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from(["<", ">"]))
            value = draw(st.sampled_from(BOUNDARIES)) & ((1 << 8 * width) - 1)
            data[at : at + width] = struct.pack(order + {1: "B", 2: "H", 4: "I"}[width], value)
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":  # another seed's header over this one's
            other = seeds[draw(st.sampled_from(names))]
            data[at : at + 32] = other[:32]
    return bytes(data)


# ------------------------------------------------------------------------------------ media


@fuzz()
@given(data=mutated(video_seeds()))
def test_decode_video_raises_only_serve_errors(data: bytes) -> None:
    only_serve_errors(lambda: media.decode_video(data, size=(16, 16), limits=VIDEO))


@fuzz()
@given(data=mutated(audio_seeds()))
def test_decode_audio_raises_only_serve_errors(data: bytes) -> None:
    only_serve_errors(lambda: media.decode_audio(data, sample_rate=48_000, max_samples=4800, limits=AUDIO))


@fuzz()
@given(data=mutated(image_seeds()))
def test_decode_image_raises_only_serve_errors(data: bytes) -> None:
    only_serve_errors(lambda: decode_image(data, IMAGE))


# ------------------------------------------------------------------------------------ /v2 tensors

DIMS = st.integers(0, 4) | st.sampled_from([2**16, 2**31 - 1, 2**31])
SHAPES = st.lists(DIMS, max_size=8)
NUMBERS = (
    st.integers(-(2**70), 2**70)
    | st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400, -(10**400)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([3.5e38, -3.5e38, 65520.0, 1e308])
)
JSON_VALUES = st.recursive(
    NUMBERS | st.booleans() | st.text(max_size=4) | st.none(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=12,
)


@fuzz()
@given(datatype=st.sampled_from(DATATYPES), shape=SHAPES, raw=st.binary(max_size=64))
def test_decode_binary_raises_only_serve_errors(datatype: str, shape: list[int], raw: bytes) -> None:
    only_serve_errors(lambda: decode_binary("x", datatype, shape, memoryview(raw)))


@fuzz()
@given(datatype=st.sampled_from(DATATYPES), shape=SHAPES, data=st.lists(JSON_VALUES, max_size=6))
def test_decode_json_raises_only_serve_errors(datatype: str, shape: list[int], data: list[Any]) -> None:
    only_serve_errors(lambda: decode_json("x", datatype, shape, data))


@fuzz()
@given(datatype=st.sampled_from([d for d in DATATYPES if d != "BYTES"]), count=st.integers(1, 4), data=st.data())
def test_decode_json_matching_shapes_refuse_only_values_that_do_not_fit(
    datatype: str, count: int, data: st.DataObject
) -> None:
    """With a shape that matches, a ServeError only ever means a value outside the datatype (and the value
    decodes to itself otherwise)."""
    values = data.draw(st.lists(NUMBERS | st.booleans(), min_size=count, max_size=count))
    try:
        tensor = decode_json("x", datatype, [count], values)
    except ServeError as exc:
        assert exc.status == 400
        return
    if datatype in ("FP16", "FP32", "FP64"):
        assert np.isfinite(tensor.array).all()


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A /v2 request body (JSON, then binary tensors) with its header length, either mostly right or anything."""
    inputs = []
    for i in range(draw(st.integers(0, 3))):
        spec: dict[str, Any] = {
            "name": draw(st.sampled_from([f"in{i}", "in0"])),
            "datatype": draw(st.sampled_from([*DATATYPES, "FP8", 3])),
            "shape": draw(SHAPES),
        }
        if draw(st.booleans()):
            spec["parameters"] = {"binary_data_size": draw(st.integers(0, 80) | st.sampled_from([2**62, -1]))}
        if draw(st.booleans()):
            spec["data"] = draw(st.lists(JSON_VALUES, max_size=4))
        inputs.append(spec)
    request: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        request["outputs"] = [{"name": "logits", "parameters": {"binary_data": draw(st.booleans())}}]
    head = json.dumps(request, allow_nan=True).encode()
    if draw(st.booleans()):  # break the JSON itself
        at = draw(st.integers(0, len(head)))
        head = head[:at] + draw(st.binary(max_size=4)) + head[at:]
    tail = draw(st.binary(max_size=96))
    length = draw(st.sampled_from([str(len(head)), None, "-1", "x", str(len(head) + 1), str(2**70)]))
    return head + tail, length


@fuzz()
@given(body=bodies())
def test_read_request_raises_only_serve_errors(body: tuple[bytes, str | None]) -> None:
    only_serve_errors(lambda: read_request(*body))


# ------------------------------------------------------------------------------------ request fields


@fuzz()
@given(
    value=st.text(max_size=40) | st.binary(max_size=40), prefix=st.sampled_from(["", "data:", "data:image/png;base64,"])
)
def test_decode_base64_raises_only_serve_errors(value: str | bytes, prefix: str) -> None:
    joined = prefix + value if isinstance(value, str) else prefix.encode() + value
    only_serve_errors(lambda: decode_base64(joined, field="inputs"))


@fuzz()
@given(
    body=mutated(
        {
            "fill-mask": b'{"inputs": ["a [MASK] b", "c"], "parameters": {"top_k": 3}}',
            "image": b'{"inputs": "aGVsbG8=", "parameters": {"top_k": 2, "function_to_apply": "softmax"}}',
        }
    ),
    model=st.sampled_from([FillMaskRequest, ClassifyImageRequest]),
)
def test_parse_json_raises_only_serve_errors(body: bytes, model: type[Any]) -> None:
    only_serve_errors(lambda: parse_json(model, body))
