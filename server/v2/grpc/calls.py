"""One gRPC call's share of what the HTTP middleware does for a request: the API key (`authorization: Bearer <key>`
or `x-api-key` metadata; the probes ServerLive and ServerReady stay open, as /v2/health/* do), the refusal while
draining, the in-flight gauge, the request metrics (route: the method's path; status: the HTTP status of the
outcome), errors as gRPC statuses (server.errors.GRPC_STATUS), the deadline and the disconnect.

Every call of every method passes through `handler`'s `unary`, and only there: the access log line (as HTTP's,
method `GRPC`, route the method's path; request id from `x-request-id` metadata or a new one, bound to every line
logged for the call) is written there, next to the metrics, where the method, model, status and duration are
known."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from server.engine.lifecycle import Lifecycle
from server.engine.metrics import Metrics
from server.engine.serving import Disconnected, InferenceService
from server.errors import GRPC_STATUS, ErrorCode, ServeError, retry_headers
from server.http.access import Exchange
from server.http.auth import KeyCheck, presented_key
from server.observability import logs
from server.settings import ModelSpec
from server.v2.grpc.messages import SERVICE_NAME

log = logging.getLogger(__name__)
HOW = "'authorization: Bearer <key>' or 'x-api-key: <key>' metadata"
CLIENT_CLOSED = 499


@dataclass(frozen=True)
class Front:
    """What every call shares: the app's engine objects and the keys."""

    service: InferenceService
    lifecycle: Lifecycle
    metrics: Metrics
    keys: KeyCheck
    version: str  # the server's


@dataclass
class CallInfo:
    """One call as it goes: when it started, which model it named (the metrics' label)."""

    context: grpc.aio.ServicerContext
    started: float
    model: str = ""
    engine: Any = None  # the engine call that served it (its outcomes: the access line's timings)

    def serves(self, model: str) -> None:
        """The call names `model`: the metrics' label, and on every line logged from here on."""
        self.model = model
        bound = logs.current()
        if bound is not None:
            bound.model = model

    def deadline(
        self, service: InferenceService, timeout_s: float | None = None, spec: ModelSpec | None = None
    ) -> float:
        """The call's deadline: the earlier of the client's gRPC deadline and the request's own timeout, within
        the cap; the model's default deadline (or request_timeout_s) when it set neither."""
        return service.deadline(self.started, self.context.time_remaining(), timeout_s, spec=spec)

    def disconnected(self) -> Disconnected:
        return functools.partial(_cancelled, self.context)


async def _cancelled(context: grpc.aio.ServicerContext) -> None:
    """Returns when the client has gone away (cancelled the call, or its deadline passed)."""
    if context.cancelled():
        return
    gone = asyncio.get_running_loop().create_future()

    def done(_: Any) -> None:
        if context.cancelled() and not gone.done():
            gone.set_result(None)

    context.add_done_callback(done)
    await gone


Behavior = Callable[[Any, CallInfo], Awaitable[Message]]


def handler(
    front: Front, method: str, behavior: Behavior, request: type[Message], response: type[Message], *, probe: bool
) -> grpc.RpcMethodHandler:
    """The unary handler of `method` ("ModelInfer"...): `behavior(request, call)` inside the checks. A probe needs
    no key, is not refused while draining and is not counted in flight."""
    route = f"/{SERVICE_NAME}/{method}"

    async def unary(message: Any, context: grpc.aio.ServicerContext) -> Message:
        call = CallInfo(context, time.monotonic())
        seen = _exchange(context, route, message, call.started, probe=probe)
        bound = logs.bind(logs.RequestContext(seen.request_id))
        if not probe:
            front.metrics.inflight.inc()
        try:
            _admit(front, context, probe=probe)
            answer = await behavior(message, call)
            seen.status, seen.bytes_out = 200, answer.ByteSize()
            return answer
        except ServeError as exc:
            seen.status, seen.error = exc.status, (exc.code.value, exc.message)
            await _abort(context, exc)
        except asyncio.CancelledError:
            seen.status = CLIENT_CLOSED
            raise
        except Exception:
            log.exception("unhandled error on gRPC %s", method)
            seen.status, seen.error = 500, (ErrorCode.INTERNAL.value, "internal server error")
            await _abort(context, ServeError(ErrorCode.INTERNAL, "internal server error"))
        finally:
            if not probe:
                front.metrics.inflight.dec()
            front.metrics.observe_request(route, call.model, seen.status, time.monotonic() - call.started)
            if front.service.settings.server.access_log:
                seen.log(route, call.model, call.engine)
            logs.unbind(bound)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return grpc.unary_unary_rpc_method_handler(
        unary, request_deserializer=request.FromString, response_serializer=response.SerializeToString
    )


def _exchange(
    context: grpc.aio.ServicerContext, route: str, message: Message, started: float, *, probe: bool
) -> Exchange:
    """The access record of a call: its request id (`x-request-id` metadata, else a new one), peer and size in."""
    metadata = context.invocation_metadata() or ()
    given = next((v for k, v in metadata if k == "x-request-id" and isinstance(v, str)), "")
    return Exchange(
        request_id=given[:128] or uuid.uuid4().hex,
        method="GRPC",
        path=route,
        client=context.peer() or "",
        probe=probe,
        started=started,
        bytes_in=message.ByteSize(),
    )


def _admit(front: Front, context: grpc.aio.ServicerContext, *, probe: bool) -> None:
    if probe:
        return
    metadata = [
        (key.encode("latin-1"), value.encode("latin-1") if isinstance(value, str) else value)
        for key, value in context.invocation_metadata() or ()
        if not key.endswith("-bin")
    ]
    refused = front.keys.refusal(presented_key(metadata), how=HOW)
    if refused is not None:
        raise refused
    if front.lifecycle.draining:
        raise ServeError(ErrorCode.NOT_READY, "the server is shutting down; retry on another instance", retry_after=1)


async def _abort(context: grpc.aio.ServicerContext, error: ServeError) -> None:
    trailing = tuple((k.lower(), v) for k, v in retry_headers(error).items())
    await context.abort(grpc.StatusCode[GRPC_STATUS[error.code]], error.message, trailing_metadata=trailing)
