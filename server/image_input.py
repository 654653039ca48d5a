"""The three ways an image arrives: raw bytes, a multipart upload, or JSON {"inputs": base64}."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from server.errors import ErrorCode, ServeError
from server.schemas import ClassifyImageRequest, ClassifyParameters
from server.uploads import decode_base64, read_form, read_json

# curl --data-binary sends x-www-form-urlencoded unless told otherwise: treat it as raw bytes.
_RAW = {"", "application/octet-stream", "application/x-www-form-urlencoded"}
_FILE_FIELDS = ("file", "image", "inputs")

OPENAPI_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "application/json": {"schema": ClassifyImageRequest.model_json_schema()},
}}}


async def read_image_request(request: Request, *, top_k: int | None) -> tuple[bytes, ClassifyParameters]:
    """(image bytes, parameters). Query `top_k` applies to raw and multipart bodies."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _multipart(request), ClassifyParameters(top_k=top_k)
    if ctype not in _RAW and ctype != "application/json" and not ctype.startswith("image/"):
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, (
            f"Content-Type {ctype!r} is not accepted: send the image bytes (image/* or application/octet-stream), "
            "a multipart/form-data upload with a 'file' part, or application/json {\"inputs\": \"<base64>\"}"))
    body = await request.body()
    if ctype == "application/json" or (ctype in _RAW and body.lstrip()[:1] == b"{"):
        return await read_json(request, ClassifyImageRequest, body, _from_json)  # parse and base64-decode
    return body, ClassifyParameters(top_k=top_k)


def _from_json(payload: ClassifyImageRequest) -> tuple[bytes, ClassifyParameters]:
    return decode_base64(payload.inputs, field="inputs"), payload.parameters


async def _multipart(request: Request) -> bytes:
    form = await read_form(request, max_files=1)
    files = [v for v in form.values() if isinstance(v, UploadFile)]
    named = [form[k] for k in _FILE_FIELDS if isinstance(form.get(k), UploadFile)]
    upload = (named or files or [None])[0]
    if upload is None:
        raise ServeError(ErrorCode.INVALID_INPUT, "multipart body has no file part; upload the image as 'file'")
    data = await upload.read()
    await form.close()
    return data
