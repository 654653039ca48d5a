"""Plain ASGI middleware: request id, access log, request span, shutdown refusal, body-size limit, body deadline,
in-flight gauge, request metrics, last-resort 500, and an answer for a request cut off by shutdown. Every error is
rendered by `server.errors.error_response` for the request's path (the protocol's shape under /v2).

Order (outermost first): RequestMiddleware -> AuthMiddleware (server/http/auth.py) -> AdmissionMiddleware
(server/http/admission.py) -> FastAPI routes. Each rejects what it can from the headers alone, before a body is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.engine.lifecycle import Lifecycle
from server.engine.metrics import Metrics
from server.errors import ErrorCode, ServeError, code_for_status, error_response
from server.http.access import Exchange, Observation
from server.http.scope import CALL_KEY, MODEL_KEY, NOT_WORK, STARTED_KEY
from server.observability.tracing import Tracing

log = logging.getLogger(__name__)


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        lifecycle: Lifecycle,
        max_body_bytes: int,
        body_timeout_s: float,
        tracing: Tracing,
        access_log: bool = True,
    ) -> None:
        self.app, self.metrics, self.lifecycle, self.max_body_bytes = app, metrics, lifecycle, max_body_bytes
        self.body_timeout_s, self.tracing, self.access_log = body_timeout_s, tracing, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        # The protocol hands a request over as soon as its headers are complete: the body's time starts now.
        body_deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        state = scope.setdefault("state", {})
        state[STARTED_KEY] = started
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        path = scope["path"]
        work = path not in NOT_WORK
        seen = Observation(scope, request_id, started=started, traced=work, tracing=self.tracing)
        status = {"code": 500, "sent": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), *seen.headers]}
            seen.exchange.sent(message)
            await send(message)

        if work:
            self.metrics.inflight.inc()
        try:
            refused = self._refused(headers, path) if work else None
            if refused is not None:
                await refused(scope, receive, send_with_id)
            else:
                await self.app(scope, self._limited(receive, body_deadline, seen.exchange), send_with_id)
        except HTTPException as exc:  # raised by the body limits while a middleware inside this one read the body
            if not status["sent"]:
                error = ServeError(code_for_status(exc.status_code), str(exc.detail))
                response = error_response(error, exc.headers, path=path, status=exc.status_code)
                await response(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # Only the server cancels a request: at the end of the shutdown grace period (or of the event loop).
            # Whatever it was doing, it gets an answer in its error shape before the cancellation goes on.
            if not status["sent"]:
                await self._cancelled(path)(scope, receive, send_with_id)
            raise
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if not status["sent"]:
                internal = error_response(ServeError(ErrorCode.INTERNAL, "internal server error"), path=path)
                await internal(scope, receive, send_with_id)
        finally:
            if work:
                self.metrics.inflight.dec()
            route = getattr(scope.get("route"), "path", None)
            model = state.get(MODEL_KEY, "")
            self._observe(route, model, status["code"], time.monotonic() - started, work=work)
            seen.finish(route, model, status["code"], state.get(CALL_KEY), access_log=self.access_log)

    def _refused(self, headers: dict[bytes, bytes], path: str) -> JSONResponse | None:
        """503 while shutting down, 413 for a declared Content-Length over the limit; None admits."""
        if self.lifecycle.draining:
            draining = ServeError(
                ErrorCode.NOT_READY, "the server is shutting down; retry on another instance", retry_after=1
            )
            return error_response(draining, {"Connection": "close"}, path=path)
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = 0
        if length <= self.max_body_bytes:
            return None
        message = f"request body is {length} bytes; at most {self.max_body_bytes} are accepted"
        return error_response(ServeError(ErrorCode.PAYLOAD_TOO_LARGE, message), path=path)

    def _cancelled(self, path: str) -> JSONResponse:
        if self.lifecycle.draining:
            message = "the server shut down before the request finished; retry on another instance"
        else:
            message = "the request was cancelled before it finished; retry"
        cancelled = ServeError(ErrorCode.NOT_READY, message, retry_after=1)
        return error_response(cancelled, {"Connection": "close"}, path=path)

    def _limited(self, receive: Receive, deadline: float, exchange: Exchange) -> Receive:
        """`receive` with the body-size limit, and the body deadline until the body is complete (after it,
        receive waits for the disconnect, which may come as late as the request's own deadline)."""
        seen, complete = 0, False

        async def limited() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body was not received within {self.body_timeout_s:g}s of its headers",
                    headers={"Connection": "close"},
                ) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            seen += len(message.get("body", b""))
            exchange.bytes_in = seen
            if seen > self.max_body_bytes:
                raise HTTPException(413, f"request body exceeds {self.max_body_bytes} bytes")
            return message

        return limited

    def _observe(self, route: str | None, model: str, status: int, seconds: float, *, work: bool) -> None:
        # Probes and scrapes are counted, but they are not the latency anyone waits on.
        self.metrics.observe_request(route or "other", model, status, seconds, timed=work)
