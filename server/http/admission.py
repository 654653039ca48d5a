"""Admission checks that need no route: the request's own deadline and the nesting depth of a JSON body.

`AdmissionMiddleware` runs inside authentication, so only authenticated bodies are read here. A JSON body
is read whole (the size limit of RequestMiddleware applies while it streams in), scanned for nesting depth
in linear time without recursion, then replayed to the route, which parses it. Deeply nested JSON is
refused before any parser sees it.
"""

from __future__ import annotations

import math

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import ErrorCode, ServeError, error_response
from server.http.offload import Offload
from server.http.scope import TIMEOUT_KEY
from server.observability.tracing import Tracing

TIMEOUT_HEADER = b"x-request-timeout"
_CHUNK = 1 << 20
_STRUCTURE = b'"[]{}'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)


def nesting_exceeds(body: bytes, limit: int) -> bool:
    """Whether a JSON text nests arrays/objects more than `limit` deep. Linear time, bounded memory, no recursion.

    Escaped backslashes, then escaped quotes, are removed so that every quote left opens or closes a string,
    and only quotes and brackets are kept; a bracket counts when an even number of quotes precede it. The
    running depth is a cumulative sum over 1 MiB chunks. Malformed JSON is left to the parser.
    """
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    depth = quotes = 0
    for start in range(0, len(text), _CHUNK):
        chunk = np.frombuffer(text, dtype=np.uint8, count=min(_CHUNK, len(text) - start), offset=start)
        is_quote = chunk == ord('"')
        outside = (np.cumsum(is_quote, dtype=np.int32) + quotes) & 1 == 0
        quotes += int(np.count_nonzero(is_quote))
        opens = (chunk == ord("[")) | (chunk == ord("{"))  # the rest are closing brackets
        levels = depth + np.cumsum(np.where(outside & ~is_quote, np.where(opens, 1, -1), 0), dtype=np.int32)
        if int(levels.max()) > limit:
            return True
        depth = int(levels[-1])
    return False


def request_timeout(value: bytes, *, cap_s: float) -> float:
    """Seconds from an X-Request-Timeout header: a positive number, capped at `cap_s`."""
    try:
        seconds = float(value.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ServeError(
            ErrorCode.INVALID_INPUT,
            (f"X-Request-Timeout must be a positive number of seconds (at most {cap_s:g} are granted)"),
        )
    return min(seconds, cap_s)


def _json_prefix(headers: dict[bytes, bytes]) -> int | None:
    """The JSON header's length of a binary-tensor-extension body (raw tensor bytes follow it)."""
    value = headers.get(b"inference-header-content-length")
    return int(value) if value is not None and value.isdigit() else None


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class AdmissionMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_json_depth: int, timeout_cap_s: float, offload: Offload, tracing: Tracing
    ) -> None:
        self.app, self.max_json_depth, self.timeout_cap_s, self.offload = app, max_json_depth, timeout_cap_s, offload
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            with self.tracing.step("admission"):
                receive = await self._admitted(scope, receive)
        except ServeError as exc:
            await error_response(exc, path=scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admitted(self, scope: Scope, receive: Receive) -> Receive:
        """The request's timeout from its header, and a JSON body read and checked: the receive to go on with."""
        headers = dict(scope.get("headers") or [])
        if TIMEOUT_HEADER in headers:
            timeout_s = request_timeout(headers[TIMEOUT_HEADER], cap_s=self.timeout_cap_s)
            scope.setdefault("state", {})[TIMEOUT_KEY] = timeout_s
        # A compressed body is the route's to inflate (and limit); its bytes say nothing of its nesting.
        if _is_json(headers.get(b"content-type", b"")) and headers.get(b"content-encoding", b"identity") in (
            b"identity",
            b"",
        ):
            return await self._checked_json(receive, _json_prefix(headers))
        return receive

    async def _checked_json(self, receive: Receive, prefix: int | None) -> Receive:
        """Read the whole body, refuse it if nested too deeply, and hand back a receive that replays it.

        `prefix`: only the first `prefix` bytes are JSON (the binary tensor extension's header)."""
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ServeError(ErrorCode.CLIENT_CLOSED, "client disconnected before the body was read")
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        text = body if prefix is None else body[:prefix]
        if await self.offload.run(nesting_exceeds, text, self.max_json_depth):
            raise ServeError(ErrorCode.BAD_REQUEST, f"JSON body is nested more than {self.max_json_depth} levels deep")
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # what follows the body: the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay
