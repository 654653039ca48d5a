"""Errors on /v2 routes: the protocol's `{"error": "message"}`, with the statuses of server.errors."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from server.errors import STATUS, ErrorCode, ServeError, describe_validation, retry_headers
from server.v2.protocol import V2Error


def v2_error(error: ServeError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=retry_headers(error))


class V2Route(APIRoute):
    """An APIRoute whose errors (ServeError, request validation, HTTP errors such as the body limit) are
    rendered in the protocol's shape. Errors raised before routing (unknown paths, middleware) keep the app's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ServeError as exc:
                return v2_error(exc)
            except RequestValidationError as exc:
                return v2_error(ServeError(ErrorCode.BAD_REQUEST, describe_validation(exc)))
            except HTTPException as exc:
                return JSONResponse(
                    {"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
                )

        return route


def v2_responses(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a /v2 route."""
    return {STATUS[c]: {"model": V2Error, "description": c.value} for c in codes}
