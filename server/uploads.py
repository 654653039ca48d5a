"""Request bodies the routes share: multipart forms, JSON payloads, base64 file fields.

Parsing a JSON body or inflating base64 is CPU work proportional to the body (up to `max_body_mb`): a large
body is parsed by `server.offload` (a worker thread, or the helper process for the largest), so it never
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
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from server.errors import ErrorCode, ServeError, describe_validation
from server.offload import INLINE_BYTES, Offload

M = TypeVar("M", bound=BaseModel)


def _offload(request: Request) -> Offload:
    return request.app.state.service.offload


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
                    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after else None
                    raise HTTPException(exc.status, exc.message, headers=headers) from None
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
