"""Plain ASGI middleware: request id, body-size limit, in-flight gauge, request metrics, last-resort 500.

Order (outermost first): RequestMiddleware -> [auth, a later release] -> FastAPI routes.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import ErrorCode, error_payload
from server.metrics import Metrics
from server.serving import MODEL_KEY, STARTED_KEY

log = logging.getLogger(__name__)

# Probes and scrapes are not work: they stay out of the in-flight (autoscaling) gauge.
NOT_WORK = frozenset({"/health/live", "/health/ready", "/metrics"})


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        state = scope.setdefault("state", {})
        state[STARTED_KEY] = started
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        status = {"code": 500, "sent": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        work = scope["path"] not in NOT_WORK
        if work:
            self.metrics.inflight.inc()
        try:
            too_big = self._declared_too_big(headers)
            if too_big is not None:
                await too_big(scope, receive, send_with_id)
            else:
                await self.app(scope, self._limited(receive), send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not status["sent"]:
                body = error_payload(ErrorCode.INTERNAL, "internal server error")
                await JSONResponse(body, status_code=500)(scope, receive, send_with_id)
        finally:
            if work:
                self.metrics.inflight.dec()
            self._observe(scope, state, status["code"], time.monotonic() - started)

    def _declared_too_big(self, headers: dict[bytes, bytes]) -> JSONResponse | None:
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = 0
        if length <= self.max_body_bytes:
            return None
        message = f"request body is {length} bytes; at most {self.max_body_bytes} are accepted"
        return JSONResponse(error_payload(ErrorCode.PAYLOAD_TOO_LARGE, message), status_code=413)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise HTTPException(413, f"request body exceeds {self.max_body_bytes} bytes")
            return message

        return limited

    def _observe(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "other"
        model = state.get(MODEL_KEY, "")
        self.metrics.requests.labels(route=route, model=model, status=str(status)).inc()
        self.metrics.request_duration.labels(route=route, model=model).observe(seconds)
