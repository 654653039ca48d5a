"""The two ways a frame pair arrives: a multipart upload (parts `frame1`, `frame2`) or JSON base64."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from server.errors import ErrorCode, ServeError
from server.uploads import decode_base64, read_form, read_json

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
        return await read_json(request, FramePairRequest, await request.body(), _from_json)
    raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, (
        f"Content-Type {ctype or 'none'!r} is not accepted: send multipart/form-data with file parts 'frame1' "
        "and 'frame2', or application/json {\"frame1\": \"<base64>\", \"frame2\": \"<base64>\"}"))


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
