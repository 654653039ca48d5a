"""Wire formats of a flow field (H, W, 2) float32 in pixels, channel 0 horizontal, 1 vertical.

npy (NumPy), flo (Middlebury), png (the Middlebury colour-wheel picture) and json (base64 of the
little-endian bytes), and which one a request asked for (`?format=` first, then Accept).
"""

from __future__ import annotations

import base64
import io
import struct
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field


class FlowFormat(StrEnum):
    NPY = "npy"
    FLO = "flo"
    PNG = "png"
    JSON = "json"


MEDIA_TYPES: dict[FlowFormat, str] = {  # in order of preference when the client accepts several
    FlowFormat.NPY: "application/x-npy",
    FlowFormat.FLO: "application/x-flo",
    FlowFormat.PNG: "image/png",
    FlowFormat.JSON: "application/json",
}
DEFAULT_FORMAT = FlowFormat.NPY
# Bytes each flow value costs to build and send in a format: 4 as float32; base64 is 4/3 of that; the
# colour-wheel PNG is smaller on the wire but works through float64 planes, so it counts as much as raw.
FORMAT_VALUE_BYTES: dict[FlowFormat, float] = {
    FlowFormat.NPY: 4,
    FlowFormat.FLO: 4,
    FlowFormat.PNG: 4,
    FlowFormat.JSON: 16 / 3,
}

FLO_MAGIC = b"PIEH"  # the float32 202021.25, little-endian
_FLO_HEADER = struct.Struct("<4sii")  # magic, width, height


class FlowArray(BaseModel):
    """The json format: the flow's raw bytes, base64."""

    shape: list[int] = Field(description="[H, W, 2]: rows, columns, (horizontal, vertical)", examples=[[436, 1024, 2]])
    dtype: Literal["float32"] = "float32"
    data: str = Field(description="base64 of the row-major little-endian float32 values")


# --- encoders -------------------------------------------------------------------------------------


def _checked(flow: np.ndarray) -> np.ndarray:
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"a flow field is (H, W, 2), got shape {flow.shape}")
    return np.ascontiguousarray(flow, dtype="<f4")


def write_npy(flow: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, _checked(flow), allow_pickle=False)
    return buffer.getvalue()


def write_flo(flow: np.ndarray) -> bytes:
    """Middlebury .flo: b"PIEH", int32 width, int32 height, then u, v interleaved row by row (all little-endian)."""
    flow = _checked(flow)
    height, width, _ = flow.shape
    return _FLO_HEADER.pack(FLO_MAGIC, width, height) + flow.tobytes()


def read_flo(data: bytes) -> np.ndarray:
    """A Middlebury .flo file -> (H, W, 2) float32."""
    if len(data) < _FLO_HEADER.size:
        raise ValueError(f"a .flo file has a {_FLO_HEADER.size}-byte header; got {len(data)} bytes")
    magic, width, height = _FLO_HEADER.unpack_from(data)
    if magic != FLO_MAGIC:
        raise ValueError(f"not a .flo file: magic {magic!r}, expected {FLO_MAGIC!r}")
    expected = _FLO_HEADER.size + 8 * width * height
    if width < 1 or height < 1 or len(data) != expected:
        raise ValueError(f".flo header says {width}x{height} (so {expected} bytes); the file has {len(data)}")
    values = np.frombuffer(data, dtype="<f4", offset=_FLO_HEADER.size)
    return values.reshape(height, width, 2).astype(np.float32)


def write_json(flow: np.ndarray) -> bytes:
    flow = _checked(flow)
    payload = FlowArray(shape=list(flow.shape), data=base64.b64encode(flow.tobytes()).decode("ascii"))
    return payload.model_dump_json().encode()


# --- the Middlebury colour wheel (Baker et al. 2011; as flow_vis and the DeepMind colab draw it) ---

# Hue segments around the wheel: (colours, channel held at 255, channel ramped, ramp rising?).
# R->Y, Y->G, G->C, C->B, B->M, M->R; 15 + 6 + 4 + 11 + 13 + 6 = 55 colours.
_SEGMENTS = ((15, 0, 1, True), (6, 1, 0, False), (4, 1, 2, True), (11, 2, 1, False), (13, 2, 0, True), (6, 0, 2, False))


def colour_wheel() -> np.ndarray:
    """(55, 3) float64 RGB in [0, 255]."""
    rows = []
    for count, held, ramped, rising in _SEGMENTS:
        ramp = np.floor(255 * np.arange(count) / count)
        segment = np.zeros((count, 3))
        segment[:, held] = 255
        segment[:, ramped] = ramp if rising else 255 - ramp
        rows.append(segment)
    return np.concatenate(rows)


_WHEEL = colour_wheel()
_POSITIONS = np.arange(len(_WHEEL), dtype=np.float64)


def flow_to_color(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) flow -> (H, W, 3) uint8 RGB: hue = direction, saturation = speed / the field's max speed.

    Zero flow is white; motion to the right is red, down yellow, left cyan, up violet-blue.
    """
    flow = np.nan_to_num(_checked(flow), nan=0.0, posinf=0.0, neginf=0.0)
    u, v = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)  # (H, W) each
    max_radius = np.sqrt(u * u + v * v).max(initial=0.0)
    u, v = u / (max_radius + 1e-5), v / (max_radius + 1e-5)
    radius = np.sqrt(u * u + v * v)  # < 1
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (len(_WHEEL) - 1)  # in [0, 54]
    out = np.empty((*radius.shape, 3), np.uint8)
    for channel in range(3):  # blend the two wheel colours either side of `position`, then desaturate
        colour = np.interp(position, _POSITIONS, _WHEEL[:, channel] / 255)
        colour = np.where(radius <= 1, 1 - radius * (1 - colour), colour * 0.75)
        out[..., channel] = np.floor(255 * colour)
    return out


def flow_to_png(flow: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(flow_to_color(flow)).save(buffer, format="PNG")  # (H, W, 3) uint8: RGB
    return buffer.getvalue()


_WRITERS = {
    FlowFormat.NPY: write_npy,
    FlowFormat.FLO: write_flo,
    FlowFormat.PNG: flow_to_png,
    FlowFormat.JSON: write_json,
}


def encode_flow(flow: np.ndarray, fmt: FlowFormat) -> bytes:
    """The response body for `fmt` (media type: MEDIA_TYPES[fmt]). CPU work: call off the event loop."""
    return _WRITERS[fmt](flow)


# --- negotiation -----------------------------------------------------------------------------------


def negotiate(fmt: FlowFormat | None, accept: str | None) -> FlowFormat:
    """`?format=` if given; else the Accept header's best match (q-values, most specific range wins);
    else npy. An Accept header naming nothing we produce is disregarded (RFC 9110, 12.5.1)."""
    if fmt is not None:
        return fmt
    ranges = _parse_accept(accept or "")
    best, best_q = DEFAULT_FORMAT, 0.0
    for candidate, media_type in MEDIA_TYPES.items():
        q = _quality(media_type, ranges)
        if q > best_q:
            best, best_q = candidate, q
    return best


def _parse_accept(header: str) -> list[tuple[str, str, float]]:
    ranges = []
    for part in header.split(","):
        fields = [f.strip() for f in part.split(";")]
        kind, _, sub = fields[0].lower().partition("/")
        if not kind or not sub:
            continue
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        ranges.append((kind, sub, q))
    return ranges


def _quality(media_type: str, ranges: list[tuple[str, str, float]]) -> float:
    kind, sub = media_type.split("/")
    best: tuple[int, float] = (-1, 0.0)  # (specificity, q)
    for r_kind, r_sub, q in ranges:
        if (r_kind, r_sub) == (kind, sub):
            specificity = 2
        elif (r_kind, r_sub) == (kind, "*"):
            specificity = 1
        elif (r_kind, r_sub) == ("*", "*"):
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


OPENAPI_CONTENT: dict[str, Any] = {
    MEDIA_TYPES[FlowFormat.NPY]: {"schema": {"type": "string", "format": "binary"}},
    MEDIA_TYPES[FlowFormat.FLO]: {"schema": {"type": "string", "format": "binary"}},
    MEDIA_TYPES[FlowFormat.PNG]: {"schema": {"type": "string", "format": "binary"}},
    MEDIA_TYPES[FlowFormat.JSON]: {"schema": FlowArray.model_json_schema()},
}
