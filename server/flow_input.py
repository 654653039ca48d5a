"""The two ways a frame pair arrives: a multipart upload (parts `frame1`, `frame2`) or JSON base64."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from server.errors import ErrorCode, ServeError
from server.limits import ImageLimits
from server.tasks.image_classification import probe_image
from server.tasks.optical_flow import check_sizes, decode_frame
from server.uploads import decode_base64, read_form, read_json

FIELDS = ("frame1", "frame2")
T = TypeVar("T")
Decoder = Callable[..., Awaitable[Any]]


class FramePairRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frame1: str = Field(min_length=1, description="The first frame's image file, base64 (a data: URL prefix is "
                        "accepted)")
    frame2: str = Field(min_length=1, description="The second frame, the same size as the first")


_BINARY = {"type": "string", "format": "binary"}
OPENAPI_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": list(FIELDS),
                                       "properties": {name: _BINARY for name in FIELDS}}},
    "application/json": {"schema": FramePairRequest.model_json_schema()},
}}}


async def read_frame_pair(request: Request) -> tuple[bytes, bytes]:
    """The two frames' file bytes, in order."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _multipart(request)
    if ctype == "application/json":
        return await read_json(FramePairRequest, await request.body(), _from_json)
    raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, (
        f"Content-Type {ctype or 'none'!r} is not accepted: send multipart/form-data with file parts 'frame1' "
        "and 'frame2', or application/json {\"frame1\": \"<base64>\", \"frame2\": \"<base64>\"}"))


def probe_frames(data1: bytes, data2: bytes, limits: ImageLimits) -> tuple[int, int]:
    """(width, height) of the pair from the files' headers (format and pixels checked; one size for both, at
    most MAX_SIDE a side); an error names the frame. Nothing is decoded."""
    sizes = [_named(name, probe_image, data, limits) for name, data in zip(FIELDS, (data1, data2), strict=True)]
    check_sizes(sizes[0], sizes[1])
    return sizes[0]


async def decode_frame_pair(decode: Decoder, data1: bytes, data2: bytes,
                            limits: ImageLimits) -> tuple[np.ndarray, np.ndarray]:
    """Both frames as (H, W, 3) uint8, one decode unit each (`decode` runs a function as one)."""
    first = await decode(_named, FIELDS[0], decode_frame, data1, limits)
    second = await decode(_named, FIELDS[1], decode_frame, data2, limits)
    return first, second


def _named(name: str, fn: Callable[[bytes, ImageLimits], T], data: bytes, limits: ImageLimits) -> T:
    try:
        return fn(data, limits)
    except ServeError as exc:
        raise ServeError(exc.code, f"{name}: {exc.message}", retry_after=exc.retry_after) from None


def _from_json(payload: FramePairRequest) -> tuple[bytes, bytes]:
    return decode_base64(payload.frame1, field=FIELDS[0]), decode_base64(payload.frame2, field=FIELDS[1])


async def _multipart(request: Request) -> tuple[bytes, bytes]:
    form = await read_form(request, max_files=2)
    try:
        parts = [form.get(name) for name in FIELDS]
        missing = [name for name, part in zip(FIELDS, parts, strict=True) if not isinstance(part, UploadFile)]
        if missing:
            raise ServeError(ErrorCode.INVALID_INPUT, (
                f"multipart body has no file part {' or '.join(repr(m) for m in missing)}; "
                "upload the two frames as 'frame1' and 'frame2'"))
        first, second = (part for part in parts if isinstance(part, UploadFile))
        return await first.read(), await second.read()
    finally:
        await form.close()
