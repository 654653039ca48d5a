"""Request bodies: JSON payloads, multipart forms, base64 file fields, and the uploads of the media routes.

Parsing a JSON body or inflating base64 is CPU work proportional to the body (up to `max_body_mb`): a large
body is parsed by `server.http.offload` (a worker thread, or the helper process for the largest), so it never
stalls the event loop, probes included. Everything the helper runs is here or in other torch-free modules.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from server.errors import ErrorCode, ServeError, describe_validation, retry_headers
from server.http.offload import INLINE_BYTES, Offload
from server.http.schemas import ClassifyImageRequest, ClassifyParameters, FramePairRequest

M = TypeVar("M", bound=BaseModel)
# curl --data-binary sends x-www-form-urlencoded unless told otherwise: a raw image body comes as that too.
_RAW = {"", "application/octet-stream", "application/x-www-form-urlencoded"}
_IMAGE_FIELDS = ("file", "image", "inputs")  # the multipart part of an image, in order of preference
FRAME_FIELDS = ("frame1", "frame2")
_BINARY = {"type": "string", "format": "binary"}


def _request_body(
    *,
    files: dict[str, Any],
    json: type[BaseModel] | None = None,
    raw: tuple[str, ...] = (),
    required: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """A route's OpenAPI request body: raw media types, a multipart form of `files` (all required unless said),
    and a JSON payload model."""
    form = {"type": "object", "required": list(files if required is None else required), "properties": files}
    content: dict[str, Any] = {media: {"schema": _BINARY} for media in raw}
    content["multipart/form-data"] = {"schema": form}
    if json is not None:
        content["application/json"] = {"schema": json.model_json_schema()}
    return {"requestBody": {"required": True, "content": content}}


def _offload(request: Request) -> Offload:
    return request.app.state.offload


def media_type(request: Request) -> str:
    """The Content-Type's media type, lower case, without parameters ("" when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _not_accepted(ctype: str, accepted: str) -> ServeError:
    return ServeError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {ctype or 'none'!r} is not accepted: send {accepted}"
    )


class _LargeJSONRequest(Request):
    """A request whose large JSON body is parsed and validated away from the event loop (small ones as FastAPI
    does); FastAPI then validates the small payload that comes back."""

    body_model: type[BaseModel]

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) <= INLINE_BYTES:
                self._json = json.loads(body)
            else:
                try:
                    self._json = await _offload(self).run(validated_payload, body, self.body_model)
                except ServeError as exc:  # FastAPI passes on only HTTPException from here; the shape is the same
                    raise HTTPException(exc.status, exc.message, headers=retry_headers(exc)) from None
        return self._json


class JSONBodyRoute(APIRoute):
    """A route whose pydantic body FastAPI parses and documents as usual, except that a large body is parsed
    (and validated against the same model) away from the event loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        model = self.body_field.field_info.annotation if self.body_field is not None else None
        request_class = type("RouteJSONRequest", (_LargeJSONRequest,), {"body_model": model})

        async def route(request: Request) -> Response:
            return await handler(request_class(request.scope, request.receive))

        return route


def validated_payload(body: bytes, model: type[BaseModel]) -> dict[str, Any]:
    """`body` validated as `model`, as plain values (small: what the model admits). 422 otherwise."""
    try:
        return model.model_validate_json(body).model_dump()
    except ValidationError as exc:
        raise ServeError(ErrorCode.INVALID_INPUT, describe_validation(exc)) from None


async def read_json(request: Request, model: type[M], body: bytes, then: Callable[[M], Any]) -> Any:
    """then(`body` validated as `model`), away from the event loop when the body is large (`then` decodes the
    base64 fields). `then` must be a module-level function of a torch-free module."""
    return await _offload(request).run(parsed_then, body, model, then)


def parsed_then(body: bytes, model: type[M], then: Callable[[M], Any]) -> Any:
    return then(parse_json(model, body))


async def read_form(request: Request, *, max_files: int, max_fields: int = 16) -> FormData:
    """The multipart form (close it when done); a malformed body is a 400, a size limit hit stays a 413."""
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except (ServeError, HTTPException, ClientDisconnect):
        raise
    except Exception as exc:
        raise ServeError(ErrorCode.BAD_REQUEST, f"malformed multipart body: {exc}") from None


def parse_json(model: type[M], body: bytes) -> M:
    """`body` validated as `model`; every violation named in one 422."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise ServeError(ErrorCode.INVALID_INPUT, f"invalid JSON body: {describe_validation(exc)}") from None


def decode_base64(value: str | bytes, *, field: str, note: str = "") -> bytes:
    """A base64 file, optionally as a data: URL."""
    comma, data_url = (b",", b"data:") if isinstance(value, bytes) else (",", "data:")
    encoded = value.partition(comma)[2] if value.startswith(data_url) else value  # type: ignore[arg-type]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(ErrorCode.INVALID_INPUT, f"{field} is not valid base64 image data{note}") from None


async def read_files(
    request: Request, names: tuple[str, ...], *, required: tuple[str, ...], what: str
) -> dict[str, bytes]:
    """The file parts `names` of a multipart body (the `required` ones must be there); `what` names them in
    errors, e.g. "the two frames as 'frame1' and 'frame2'"."""
    form = await read_form(request, max_files=len(names), max_fields=len(names) + 8)
    try:
        parts = {name: form.get(name) for name in names if form.get(name) is not None}
        missing = [name for name in required if not isinstance(parts.get(name), UploadFile)]
        if missing:
            raise ServeError(
                ErrorCode.INVALID_INPUT,
                f"multipart body has no file part {' or '.join(repr(m) for m in missing)}; upload {what}",
            )
        wrong = [name for name, part in parts.items() if not isinstance(part, UploadFile)]
        if wrong:
            raise ServeError(ErrorCode.INVALID_INPUT, f"the {wrong[0]!r} part must be a file; upload {what}")
        return {name: await part.read() for name, part in parts.items() if isinstance(part, UploadFile)}
    finally:
        await form.close()


# ---------------------------------------------------------------------------------------- an image

IMAGE_BODY = _request_body(
    files={"file": _BINARY},
    json=ClassifyImageRequest,
    raw=("image/*", "application/octet-stream"),
)


async def read_image(request: Request, *, top_k: int | None) -> tuple[bytes, ClassifyParameters]:
    """(image file bytes, parameters): the raw body, a multipart upload, or JSON {"inputs": base64}. Query
    `top_k` applies to raw and multipart bodies."""
    ctype = media_type(request)
    if ctype == "multipart/form-data":
        return await _image_part(request), ClassifyParameters(top_k=top_k)
    if ctype not in _RAW and ctype != "application/json" and not ctype.startswith("image/"):
        raise _not_accepted(
            ctype,
            "the image bytes (image/* or application/octet-stream), a multipart/form-data "
            'upload with a \'file\' part, or application/json {"inputs": "<base64>"}',
        )
    body = await request.body()
    if ctype == "application/json" or (ctype in _RAW and body.lstrip()[:1] == b"{"):
        return await read_json(request, ClassifyImageRequest, body, _image_from_json)
    return body, ClassifyParameters(top_k=top_k)


def _image_from_json(payload: ClassifyImageRequest) -> tuple[bytes, ClassifyParameters]:
    return decode_base64(payload.inputs, field="inputs"), payload.parameters


async def _image_part(request: Request) -> bytes:
    """The first file part, those named file, image or inputs first."""
    form = await read_form(request, max_files=1)
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        named = [v for k in _IMAGE_FIELDS if isinstance(v := form.get(k), UploadFile)]
        upload = next(iter(named or files), None)
        if upload is None:
            raise ServeError(ErrorCode.INVALID_INPUT, "multipart body has no file part; upload the image as 'file'")
        return await upload.read()
    finally:
        await form.close()


# ---------------------------------------------------------------------------------------- a frame pair

FRAME_PAIR_BODY = _request_body(files=dict.fromkeys(FRAME_FIELDS, _BINARY), json=FramePairRequest)


async def read_frame_pair(request: Request) -> tuple[bytes, bytes]:
    """The two frames' file bytes, in order: multipart parts frame1 and frame2, or JSON base64."""
    ctype = media_type(request)
    if ctype == "multipart/form-data":
        files = await read_files(
            request, FRAME_FIELDS, required=FRAME_FIELDS, what="the two frames as 'frame1' and 'frame2'"
        )
        return files["frame1"], files["frame2"]
    if ctype == "application/json":
        return await read_json(request, FramePairRequest, await request.body(), _frames_from_json)
    raise _not_accepted(
        ctype,
        "multipart/form-data with file parts 'frame1' and 'frame2', or application/json "
        '{"frame1": "<base64>", "frame2": "<base64>"}',
    )


def _frames_from_json(payload: FramePairRequest) -> tuple[bytes, bytes]:
    return decode_base64(payload.frame1, field="frame1"), decode_base64(payload.frame2, field="frame2")


# ---------------------------------------------------------------------------------------- a clip

CLIP_BODY = _request_body(
    files={
        "video": {**_BINARY, "description": ".npy/.npz uint8 frames (T x H x W x 3), or mp4/webm/avi (needs PyAV)"},
        "audio": {
            **_BINARY,
            "description": "WAV/FLAC/OGG, any rate (resampled to 48 kHz), mixed to mono; silence if absent",
        },
    },
    required=("video",),
)


async def read_clip(request: Request) -> tuple[bytes, bytes | None]:
    """(video file, audio file or None): multipart parts video and audio."""
    ctype = media_type(request)
    if ctype != "multipart/form-data":
        raise _not_accepted(ctype, "multipart/form-data with a 'video' part and an optional 'audio' part")
    files = await read_files(
        request,
        ("video", "audio"),
        required=("video",),
        what="the clip as 'video' and, optionally, its sound as 'audio' (WAV, FLAC or OGG)",
    )
    return files["video"], files.get("audio")
