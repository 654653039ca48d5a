"""One error vocabulary: every failure the server reports is a `ServeError` with an `ErrorCode`.

The code -> HTTP status and code -> gRPC status maps live here and only here. The JSON shape depends on the path,
decided in one place (`error_body`): under `/v2` the Open Inference Protocol's `{"error": "message"}` (its clients,
tritonclient and the KServe SDK, read that and nothing else), everywhere else the app's
`{"error": {"code": ..., "message": ..., "status": ...}}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel

T = TypeVar("T")
R = TypeVar("R")


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
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
    ErrorCode.FORBIDDEN: 403,
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

# The gRPC status of each code (grpc.StatusCode member names: the core does not import grpc). Retryable
# conditions are UNAVAILABLE, which gRPC clients' retry policies retry; a deadline is DEADLINE_EXCEEDED.
GRPC_STATUS: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "INVALID_ARGUMENT",
    ErrorCode.UNAUTHORIZED: "UNAUTHENTICATED",
    ErrorCode.FORBIDDEN: "PERMISSION_DENIED",
    ErrorCode.INVALID_INPUT: "INVALID_ARGUMENT",
    ErrorCode.PAYLOAD_TOO_LARGE: "RESOURCE_EXHAUSTED",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "INVALID_ARGUMENT",
    ErrorCode.NOT_FOUND: "NOT_FOUND",
    ErrorCode.METHOD_NOT_ALLOWED: "UNIMPLEMENTED",
    ErrorCode.REQUEST_TIMEOUT: "DEADLINE_EXCEEDED",
    ErrorCode.HEADERS_TOO_LARGE: "RESOURCE_EXHAUSTED",
    ErrorCode.UNKNOWN_MODEL: "NOT_FOUND",
    ErrorCode.NO_MODEL_FOR_TASK: "NOT_FOUND",
    ErrorCode.OVERLOADED: "UNAVAILABLE",
    ErrorCode.MODEL_UNAVAILABLE: "UNAVAILABLE",
    ErrorCode.NOT_READY: "UNAVAILABLE",
    ErrorCode.UNHEALTHY: "UNAVAILABLE",
    ErrorCode.OUT_OF_MEMORY: "UNAVAILABLE",
    ErrorCode.TIMEOUT: "DEADLINE_EXCEEDED",
    ErrorCode.CLIENT_CLOSED: "CANCELLED",
    ErrorCode.INTERNAL: "INTERNAL",
}

_BY_STATUS = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
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
    """The app's error shape (every route outside /v2)."""

    error: ErrorBody


def code_for_status(status: int) -> ErrorCode:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ErrorCode.BAD_REQUEST if 400 <= status < 500 else ErrorCode.INTERNAL


V2_PREFIX = "/v2"  # the Open Inference Protocol's routes: its error shape


def protocol_path(path: str) -> bool:
    """Whether `path` is under the Open Inference Protocol's routes."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def error_body(code: ErrorCode, message: str, status: int | None = None, *, path: str = "") -> dict[str, Any]:
    """The error object for a response to `path`: the protocol's shape under /v2, the app's elsewhere."""
    if protocol_path(path):
        return {"error": message}
    return {"error": {"code": code.value, "message": message, "status": status or STATUS[code]}}


def retry_headers(error: ServeError) -> dict[str, str]:
    """`Retry-After` in whole seconds (at least 1) when the error says when to retry: for both error shapes."""
    return {} if error.retry_after is None else {"Retry-After": str(max(1, math.ceil(error.retry_after)))}


def error_response(
    error: ServeError, headers: Mapping[str, str] | None = None, *, path: str = "", status: int | None = None
) -> JSONResponse:
    """`error` as the response to `path` (`status`: an HTTP status other than its code's, e.g. an HTTPException's)."""
    headers = {**(headers or {}), **retry_headers(error)}
    status = status or error.status
    return JSONResponse(error_body(error.code, error.message, status, path=path), status_code=status, headers=headers)


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
    """Route every error FastAPI/Starlette raises through `error_response`, shaped by the request's path. A
    request body that does not validate is 422 on the app's routes and 400 under /v2 (the protocol's status for
    a request it cannot read)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    async def on_serve_error(request: Any, exc: ServeError) -> JSONResponse:
        return error_response(exc, path=request.url.path)

    async def on_validation(request: Any, exc: RequestValidationError) -> JSONResponse:
        path = request.url.path
        code = ErrorCode.BAD_REQUEST if protocol_path(path) else ErrorCode.INVALID_INPUT
        return error_response(ServeError(code, describe_validation(exc)), path=path)

    async def on_http(request: Any, exc: HTTPException) -> JSONResponse:
        error = ServeError(code_for_status(exc.status_code), str(exc.detail))
        headers = getattr(exc, "headers", None)
        return error_response(error, headers, path=request.url.path, status=exc.status_code)

    async def on_disconnect(request: Any, _exc: ClientDisconnect) -> JSONResponse:  # nobody reads it; counted
        error = ServeError(ErrorCode.CLIENT_CLOSED, "client disconnected before the body was read")
        return error_response(error, path=request.url.path)

    app.add_exception_handler(ServeError, on_serve_error)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
