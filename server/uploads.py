"""Request bodies the routes share: multipart forms, JSON payloads, base64 file fields.

Parsing a JSON body or inflating base64 is CPU work proportional to the body (up to `max_body_mb`): past
INLINE_BYTES it runs on a worker thread, so a large body never stalls the event loop (probes included).
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
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from server.errors import ErrorCode, ServeError, describe_validation

M = TypeVar("M", bound=BaseModel)
INLINE_BYTES = 64 * 1024  # bodies up to this size are parsed on the event loop (a thread hop costs more)


class _OffLoopJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = json.loads(body) if len(body) <= INLINE_BYTES else await run_in_threadpool(json.loads, body)
        return self._json


class JSONBodyRoute(APIRoute):
    """A route whose JSON body FastAPI parses (and validates against its pydantic model) as usual, except that
    a large body is parsed on a worker thread."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_OffLoopJSONRequest(request.scope, request.receive))

        return route


async def read_json(model: type[M], body: bytes, then: Callable[[M], Any] = lambda m: m) -> Any:
    """then(`body` validated as `model`), on a worker thread for a large body (`then` decodes base64 fields)."""
    if len(body) <= INLINE_BYTES:
        return then(parse_json(model, body))
    return await run_in_threadpool(lambda: then(parse_json(model, body)))


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
