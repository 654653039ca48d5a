"""Request bodies the media routes share: multipart forms, JSON payloads, base64 file fields."""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from server.errors import ErrorCode, ServeError

M = TypeVar("M", bound=BaseModel)


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
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ServeError(ErrorCode.INVALID_INPUT, f"invalid JSON body: {detail}") from None


def decode_base64(value: str | bytes, *, field: str, note: str = "") -> bytes:
    """A base64 file, optionally as a data: URL."""
    comma, data_url = (b",", b"data:") if isinstance(value, bytes) else (",", "data:")
    encoded = value.split(comma, 1)[1] if value.startswith(data_url) else value  # type: ignore[arg-type]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(ErrorCode.INVALID_INPUT, f"{field} is not valid base64 image data{note}") from None
