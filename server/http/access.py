"""One request as the access log and the error log see it: what came in, what went out, and what the model did.

The access line (logger `server.access`, info; probes and scrapes at debug; gRPC calls too, method `GRPC`) carries
the request id, method, route template, status, duration, model, bytes in and out, queue and inference
milliseconds, batch size, items and client address. An error answer adds a line of its own: every 5xx at error
level (a probe's at debug: a 503 while starting or draining is what probes are for), every 4xx at debug, with its
code and message. Headers, query strings and bodies are never logged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Message, Scope

from server.observability import logs
from server.observability.logs import ACCESS_LOGGER
from server.observability.tracing import Tracing

access_log = logging.getLogger(ACCESS_LOGGER)
error_log = logging.getLogger(__name__)
_ERROR_BODY_BYTES = 4096  # the start of an error answer, where its code and message are
_PATH_CHARS = 200  # an unrouted path is logged this far, never its query string


@dataclass
class Exchange:
    """The access record of one request, filled in as it is handled."""

    request_id: str
    method: str
    path: str
    client: str
    probe: bool
    started: float = field(default_factory=time.monotonic)
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    error_body: bytes = b""
    error: tuple[str, str] | None = None  # (code, message) of an error answer known as such (gRPC)

    @classmethod
    def of(cls, scope: Scope, request_id: str, *, probe: bool) -> Exchange:
        client = scope.get("client")
        return cls(
            request_id=request_id,
            method=scope.get("method", ""),
            path=scope.get("path", "")[:_PATH_CHARS],
            client=f"{client[0]}:{client[1]}" if client else "",
            probe=probe,
        )

    def sent(self, message: Message) -> None:
        """Account for a message of the answer as it goes out."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            self.bytes_out += len(body)
            if self.status >= 400 and len(self.error_body) < _ERROR_BODY_BYTES:
                self.error_body += body[: _ERROR_BODY_BYTES - len(self.error_body)]

    def fields(self, route: str | None, model: str, call: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "route": route or "",
            "status": self.status,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 2),
            "model": model,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "client": self.client,
        }
        if route is None:
            entry["path"] = self.path
        return entry | call_timings(call)

    def log(self, route: str | None, model: str, call: Any) -> None:
        entry = self.fields(route, model, call)
        message = f"{self.method} {route or self.path} {self.status}"
        access_log.log(logging.DEBUG if self.probe else logging.INFO, message, extra=entry)
        # A probe's 503 (starting up, draining) is what probes are for: at debug, as its access line.
        level = logging.ERROR if self.status >= 500 and not self.probe else logging.DEBUG
        if self.status >= 400 and error_log.isEnabledFor(level):
            code, text = self._error()
            error_log.log(
                level,
                "%s %s answered %d %s: %s",
                self.method,
                route or self.path,
                self.status,
                code,
                text,
                extra={"request_id": self.request_id, "model": model, "status": self.status, "error_code": code},
            )

    def _error(self) -> tuple[str, str]:
        """The code and message of an error answer (both shapes: {"error": {...}} and {"error": "message"})."""
        if self.error is not None:
            return self.error
        try:
            error = json.loads(self.error_body).get("error")
        except (ValueError, AttributeError):
            return "", self.error_body[:200].decode("utf-8", "replace")
        if isinstance(error, dict):
            return str(error.get("code", "")), str(error.get("message", ""))
        return "", str(error)


def call_timings(call: Any) -> dict[str, Any]:
    """What the model did for a request, over all its items (texts, images, tiles, passes): the longest queue wait
    and forward pass any of them had, the forward passes that carried them added up, the largest batch they ran
    in, and how many there were. Empty when it reached no model."""
    timing = getattr(call, "timing", None)
    return timing.figures() if timing is not None else {}


class Observation:
    """What is recorded of one request from its arrival to its answer: the access record, the request context of
    every line logged while it is handled, and its span (`traced` and tracing on: not for probes and scrapes)."""

    def __init__(self, scope: Scope, request_id: str, *, started: float, traced: bool, tracing: Tracing) -> None:
        self.exchange = Exchange.of(scope, request_id, probe=not traced)
        self.exchange.started = started
        self.tracing = tracing
        self._context = logs.bind(logs.RequestContext(request_id))
        self.headers = [(b"x-request-id", request_id.encode("latin-1"))]  # added to the answer
        self.span: Any = None
        if traced and tracing.enabled:
            method = scope.get("method", "")
            self.span = tracing.start_request(method, scope.get("headers") or [], _span_attributes(scope, request_id))
            self._active = tracing.activate(self.span)
            self.headers += tracing.response_headers(self.span)

    def finish(self, route: str | None, model: str, status: int, call: Any, *, access_log: bool) -> None:
        self.exchange.status = status
        if self.span is not None:
            self.tracing.deactivate(self._active)
            timings = {f"perceiver.{k}": v for k, v in call_timings(call).items()}
            self.tracing.finish_request(
                self.span, route=route, status=status, attributes={"perceiver.model": model, **timings}
            )
        if access_log:
            self.exchange.log(route, model, call)
        logs.unbind(self._context)


def _span_attributes(scope: Scope, request_id: str) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "http.request.method": scope.get("method", ""),
        "url.path": scope.get("path", ""),
        "url.scheme": scope.get("scheme", "http"),
        "perceiver.request_id": request_id,
    }
    client = scope.get("client")
    if client:
        attributes["client.address"], attributes["client.port"] = client[0], client[1]
    return attributes
