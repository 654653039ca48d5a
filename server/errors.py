"""One error vocabulary: every failure the server reports is a `ServeError` with an `ErrorCode`.

The code -> HTTP status map lives here and only here; the JSON shape is
`{"error": {"code": ..., "message": ..., "status": ...}}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel

T = TypeVar("T")
R = TypeVar("R")


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    INVALID_INPUT = "invalid_input"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    HEADERS_TOO_LARGE = "headers_too_large"
    UNKNOWN_MODEL = "unknown_model"
    NO_MODEL_FOR_TASK = "no_model_for_task"
    OVERLOADED = "overloaded"
    MODEL_UNAVAILABLE = "model_unavailable"
    NOT_READY = "not_ready"
    UNHEALTHY = "unhealthy"
    OUT_OF_MEMORY = "out_of_memory"
    JOBS_UNAVAILABLE = "jobs_unavailable"
    TIMEOUT = "timeout"
    CLIENT_CLOSED = "client_closed"
    INTERNAL = "internal_error"


# What routes may answer, for their OpenAPI `responses=` (server.errors.responses, server.v2.errors.v2_responses).
SERVING = (
    ErrorCode.UNKNOWN_MODEL,
    ErrorCode.NO_MODEL_FOR_TASK,
    ErrorCode.OVERLOADED,
    ErrorCode.MODEL_UNAVAILABLE,
    ErrorCode.TIMEOUT,
)  # any route that runs a model
TEXT_INPUT = (ErrorCode.INVALID_INPUT, ErrorCode.PAYLOAD_TOO_LARGE)
FILE_INPUT = (ErrorCode.BAD_REQUEST, *TEXT_INPUT, ErrorCode.UNSUPPORTED_MEDIA_TYPE)

STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.INVALID_INPUT: 422,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.NO_MODEL_FOR_TASK: 404,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.MODEL_UNAVAILABLE: 503,
    ErrorCode.NOT_READY: 503,
    ErrorCode.UNHEALTHY: 503,
    ErrorCode.OUT_OF_MEMORY: 503,
    ErrorCode.JOBS_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.CLIENT_CLOSED: 499,
    ErrorCode.INTERNAL: 500,
}

_BY_STATUS = {
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.REQUEST_TIMEOUT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.INVALID_INPUT,
    429: ErrorCode.OVERLOADED,
    431: ErrorCode.HEADERS_TOO_LARGE,
    503: ErrorCode.NOT_READY,
    504: ErrorCode.TIMEOUT,
}


class ServeError(Exception):
    """A failure with a public message; `retry_after` (seconds) becomes a Retry-After header."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (server.http.offload) intact
        return (_serve_error, (self.code, self.message, self.retry_after))


def _serve_error(code: ErrorCode, message: str, retry_after: float | None) -> ServeError:
    return ServeError(code, message, retry_after=retry_after)


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str
    status: int


class ErrorResponse(BaseModel):
    """The one error shape of every route."""

    error: ErrorBody


def code_for_status(status: int) -> ErrorCode:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ErrorCode.BAD_REQUEST if 400 <= status < 500 else ErrorCode.INTERNAL


def error_payload(code: ErrorCode, message: str, status: int | None = None) -> dict[str, Any]:
    return {"error": {"code": code.value, "message": message, "status": status or STATUS[code]}}


def retry_headers(error: ServeError) -> dict[str, str]:
    """`Retry-After` in whole seconds (at least 1) when the error says when to retry: for both error shapes."""
    return {} if error.retry_after is None else {"Retry-After": str(max(1, math.ceil(error.retry_after)))}


def error_response(error: ServeError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = {**(headers or {}), **retry_headers(error)}
    return JSONResponse(error_payload(error.code, error.message), status_code=error.status, headers=headers)


def responses(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route: the error shape under each status it may answer."""
    return {STATUS[c]: {"model": ErrorResponse, "description": c.value} for c in codes}


def prepare_each(
    values: Sequence[T], prepare: Callable[[T], R], *, name: str = "inputs", name_single: bool = False
) -> list[R]:
    """prepare(v) for each value; an error names the value (`inputs[2]: ...`), a lone value's only
    with `name_single` (the task routes' single input is not a list; a tensor's rows always are)."""
    items = []
    for i, value in enumerate(values):
        try:
            items.append(prepare(value))
        except ServeError as exc:
            if len(values) == 1 and not name_single:
                raise
            raise ServeError(exc.code, f"{name}[{i}]: {exc.message}", retry_after=exc.retry_after) from None
    return items


MAX_DESCRIBED_ERRORS = 10  # a message names this many validation errors, then counts the rest


def describe_validation(exc: Any) -> str:
    """A pydantic or FastAPI validation error as one line: `inputs.0: Input should be a valid string; ...`."""
    errors = exc.errors()
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', 'invalid')}"
        for e in errors[:MAX_DESCRIBED_ERRORS]
    ]
    if len(errors) > MAX_DESCRIBED_ERRORS:
        parts.append(f"and {len(errors) - MAX_DESCRIBED_ERRORS} more")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: Any) -> None:
    """Route every error FastAPI/Starlette raises through the one error shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    async def on_serve_error(_request: Any, exc: ServeError) -> JSONResponse:
        return error_response(exc)

    async def on_validation(_request: Any, exc: RequestValidationError) -> JSONResponse:
        return error_response(ServeError(ErrorCode.INVALID_INPUT, describe_validation(exc)))

    async def on_http(_request: Any, exc: HTTPException) -> JSONResponse:
        code = code_for_status(exc.status_code)
        body = error_payload(code, str(exc.detail), exc.status_code)
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def on_disconnect(_request: Any, _exc: ClientDisconnect) -> JSONResponse:  # nobody reads it; counted
        return error_response(ServeError(ErrorCode.CLIENT_CLOSED, "client disconnected before the body was read"))

    app.add_exception_handler(ServeError, on_serve_error)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
