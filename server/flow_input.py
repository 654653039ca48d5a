"""The two ways a frame pair arrives: a multipart upload (parts `frame1`, `frame2`) or JSON base64."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from server.errors import ErrorCode, ServeError
from server.tasks.image_classification import DEFAULT_IMAGE_LIMITS, ImageLimits, decode_image

FIELDS = ("frame1", "frame2")


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
        return _from_json(await request.body())
    raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, (
        f"Content-Type {ctype or 'none'!r} is not accepted: send multipart/form-data with file parts 'frame1' "
        "and 'frame2', or application/json {\"frame1\": \"<base64>\", \"frame2\": \"<base64>\"}"))


def decode_frames(data1: bytes, data2: bytes,
                  limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> tuple[Image.Image, Image.Image]:
    """Both frames as RGB images; an error names the frame. CPU work: call off the event loop."""
    frames = []
    for name, data in zip(FIELDS, (data1, data2), strict=True):
        try:
            frames.append(decode_image(data, limits))
        except ServeError as exc:
            raise ServeError(exc.code, f"{name}: {exc.message}", retry_after=exc.retry_after) from None
    return frames[0], frames[1]


def _from_json(body: bytes) -> tuple[bytes, bytes]:
    try:
        payload = FramePairRequest.model_validate_json(body)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ServeError(ErrorCode.INVALID_INPUT, f"invalid JSON body: {detail}") from None
    return _b64(FIELDS[0], payload.frame1), _b64(FIELDS[1], payload.frame2)


def _b64(name: str, value: str) -> bytes:
    encoded = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(ErrorCode.INVALID_INPUT, f"{name} is not valid base64 image data") from None


async def _multipart(request: Request) -> tuple[bytes, bytes]:
    try:
        form = await request.form(max_files=2, max_fields=16)
    except (ServeError, HTTPException):
        raise
    except Exception as exc:
        raise ServeError(ErrorCode.BAD_REQUEST, f"malformed multipart body: {exc}") from None
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
