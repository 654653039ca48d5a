"""Connection guard: the HTTP protocol bounds what a client may hold open before the app sees a request.

uvicorn's httptools protocol has no header timeout and no header-size cap, and a connection that never sends a
byte is never closed: a few hundred clients trickling header bytes would hold every file descriptor. The guard
is a mixin over uvicorn's protocol classes (`uvicorn.Config(http=protocol_class(limits))`):

- a request's headers must be complete within `header_timeout_s` of the connection opening (first request) or
  of the request's first byte (later ones); else 408. uvicorn's keep-alive timer covers the wait in between.
- headers over `max_header_kb` -> 431, counted as they arrive: a header that never ends is cut too.
- at `max_connections`, a new connection closes the one that has waited longest for its headers (503), else
  the longest idle keep-alive one (quietly); when none can go (every request in progress, or every waiter just
  accepted), the new one gets 503 with Retry-After. A normal client sends its headers as it connects and is
  then busy, not waiting: it is closed only if `max_connections` others connect before it has been read.
- a body still arriving `body_timeout_s` after its headers is cut once its answer has gone (while the app is
  still reading it, the app answers 408 itself: server.http.middleware).
- at shutdown, a connection waiting for headers gets 503 rather than a bare close.

Every answer is the JSON error shape of the request's path once its request line is read (the protocol's under
/v2), the app's before, with `Connection: close`, and the connection closes after it.
A client that comes back at once after each cut cannot be told from a new one: a flood of those is for a
connection-rate limit in front of the server; the guard keeps the descriptors bounded meanwhile.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.errors import ErrorCode, ServeError, error_response
from server.http.connection_table import ConnectionTable, Phase
from server.limits import ConnectionLimits

log = logging.getLogger(__name__)
READ_CHUNK = 256 * 1024  # the most asyncio's socket transport reads at once
_HEADER_LINE = 4  # ": " and CRLF around each header


class ConnectionGuard(ABC):
    """Mixed into a uvicorn HTTP protocol (left of it in the bases). The concrete classes below report when a
    request begins (`_request_begun`) and when its headers are complete (`_headers_done`)."""

    limits: ClassVar[ConnectionLimits]
    table: ClassVar[ConnectionTable]
    answer_headers: ClassVar[tuple[tuple[bytes, bytes], ...]] = ()  # on every answer the guard gives itself
    # Provided by the uvicorn protocol.
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    server_state: Any
    cycle: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting = True  # the current request's headers are not complete (from the connection's opening)
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_cycle: Any = None  # the request whose body the body timer waits for
        self._body_overdue = False
        self._done = False  # answered by the guard, or lost: nothing more to do
        self._path = ""  # of the request being read, once its request line is (for the error shape)
        self.settled = False  # has had a chance to send its headers: may be evicted

    # ------------------------------------------------------------------ uvicorn protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]  # the uvicorn protocol, next in the MRO
        # Reading starts on the next loop iteration, and what a client sent with its connection is read on the
        # one after: until then the connection may not be evicted (however long the iterations take), or a crowd
        # of connections accepted in one go would evict the client that sent its whole request at once.
        self.loop.call_soon(self.loop.call_soon, self._settle)
        if len(self.table) >= self.limits.max_connections and not self._make_room():
            self.table.note("refused (none to evict)")
            self._answer(
                ServeError(
                    ErrorCode.NOT_READY,
                    "the server has no room for another connection now; retry shortly",
                    retry_after=1,
                )
            )
            return
        self._update()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        if self._awaiting:
            self._header_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        if not self._done and self._awaiting and self._header_bytes > self.limits.max_header_bytes:
            self._headers_too_large()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self._done or self.transport.is_closing():
            return
        if self._body_overdue and self._body_cycle.response_complete and self._body_pending():
            self._cut("body timeout")
            return
        self._update()

    def shutdown(self) -> None:
        if not self._done and self._phase() is Phase.HEADERS:  # a request may be on its way: say why it goes unserved
            self._answer(
                ServeError(ErrorCode.NOT_READY, "the server is shutting down; retry on another instance", retry_after=1)
            )
            return
        super().shutdown()  # type: ignore[misc]

    def send_400_response(self, msg: str) -> None:
        if not self._done:
            self._answer(
                ServeError(
                    ErrorCode.BAD_REQUEST, "invalid HTTP request: the request line or headers could not be parsed"
                )
            )

    # ------------------------------------------------------------------ request progress

    def _settle(self) -> None:
        self.settled = True

    def _request_begun(self) -> None:
        if self._awaiting:
            return
        self._awaiting, self._header_bytes = True, 0
        self._cancel_body_timer()  # a new request: the previous body is complete
        self._update()

    def _headers_done(self) -> None:
        self._awaiting, self._header_bytes = False, 0
        self._cancel_body_timer()
        self._body_cycle = self.cycle
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_late)
        self._update()

    @abstractmethod
    def _body_pending(self) -> bool:
        """Whether the current request's body is still arriving."""

    def _phase(self) -> Phase:
        if self.cycle is not None and not self.cycle.response_complete:
            return Phase.BUSY
        return Phase.HEADERS if self._awaiting else Phase.IDLE

    def _update(self) -> None:
        """Record the phase; the header timer runs exactly while waiting for headers with no request in
        progress (a pipelined request's headers get their full time once the one before is answered)."""
        if self._done:
            return
        phase = self._phase()
        self.table.set(self, phase)
        if phase is Phase.HEADERS and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_late)
        elif phase is not Phase.HEADERS and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    # ------------------------------------------------------------------ cuts

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._done or self._phase() is not Phase.HEADERS:
            return
        self.table.note("header timeout")
        late = f"the request headers were not complete within {self.limits.header_timeout_s:g}s"
        self._answer(ServeError(ErrorCode.REQUEST_TIMEOUT, late))

    def _headers_too_large(self) -> None:
        self.table.note("headers too large")
        large = f"the request line and headers are over {self.limits.max_header_bytes // 1024} KiB"
        self._answer(ServeError(ErrorCode.HEADERS_TOO_LARGE, large))

    def _body_late(self) -> None:
        """The body is overdue: cut now if the answer has gone (the rest is not worth reading), else once it has
        (the app, still reading, answers 408 itself)."""
        self._body_timer = None
        if self._done or not self._body_pending():
            return
        if self._body_cycle is None or self._body_cycle.response_complete:
            self._cut("body timeout")
        else:
            self._body_overdue = True

    def _make_room(self) -> bool:
        found = self.table.victim()
        if found is None:
            return False
        victim, since = found
        if self.table.phases[victim] is Phase.HEADERS:
            self.table.note("evicted (waiting for headers)")
            victim._answer(
                ServeError(
                    ErrorCode.NOT_READY,
                    "the connection was closed to make room for others: its "
                    f"request headers were not complete after {time.monotonic() - since:.1f}s",
                    retry_after=1,
                )
            )
        else:
            victim._cut("evicted (idle)")
        return True

    def _cut(self, why: str) -> None:
        """Close without an answer: none is owed (idle, or answered already)."""
        self.table.note(why)
        self._finish()
        self.transport.close()

    def _answer(self, error: ServeError) -> None:
        """Write `error` as the connection's last answer, then close it."""
        self._finish()
        if self.transport.is_closing():
            return
        response = error_response(error, headers={"Connection": "close"}, path=self._path)
        lines = [f"HTTP/1.1 {response.status_code} {http.HTTPStatus(response.status_code).phrase}\r\n".encode()]
        lines += [
            name + b": " + value + b"\r\n"
            for name, value in [*self.server_state.default_headers, *response.raw_headers, *self.answer_headers]
        ]
        self.transport.write(b"".join(lines) + b"\r\n" + response.body)
        self.transport.close()

    def _finish(self) -> None:
        self._done = True
        self.table.forget(self)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._cancel_body_timer()

    def _cancel_body_timer(self) -> None:
        self._body_overdue, self._body_cycle = False, None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


class GuardedHttpTools(ConnectionGuard, HttpToolsProtocol):
    """httptools reports each stage; the request line and headers are measured exactly once complete."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._message_complete = False

    def on_message_begin(self) -> None:
        if self._done:
            return
        super().on_message_begin()
        self._message_complete, self._path = False, ""
        self._request_begun()

    def on_url(self, url: bytes) -> None:
        if not self._done:
            super().on_url(url)
            self._path = self.url.split(b"?", 1)[0].decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._done:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._done:
            return
        size = len(self.url) + sum(len(n) + len(v) + _HEADER_LINE for n, v in self.headers)
        if size > self.limits.max_header_bytes:
            self._headers_too_large()  # the parser reads on through this chunk; every callback is a no-op now
            return
        super().on_headers_complete()
        self._headers_done()

    def on_body(self, body: bytes) -> None:
        if not self._done:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._done:
            return
        self._message_complete = True
        self._cancel_body_timer()
        super().on_message_complete()

    def _body_pending(self) -> bool:
        return not self._message_complete


class GuardedH11(ConnectionGuard, H11Protocol):
    """h11 parses a request only once the one before is answered: its states say where the client is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # h11 answers 400 past its own buffer cap: above one read over ours, so the guard's 431 comes first.
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes + READ_CHUNK)

    def data_received(self, data: bytes) -> None:
        if not self._done and self.conn.their_state is h11.IDLE:
            self._request_begun()
        cycle = self.cycle
        super().data_received(data)
        self._sync(cycle)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # starts the next cycle, which may parse a pipelined request
        self._sync(cycle)

    def _sync(self, cycle_before: Any) -> None:
        if self._done:
            return
        if self.cycle is not cycle_before:
            self._headers_done()
        if not self._body_pending():
            self._cancel_body_timer()
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._request_begun()

    def _body_pending(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY


_IMPLEMENTATIONS: dict[str, type[ConnectionGuard]] = {"httptools": GuardedHttpTools, "h11": GuardedH11}


def protocol_class(
    limits: ConnectionLimits,
    http_impl: Literal["httptools", "h11"] = "httptools",
    *,
    answer_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> type[Any]:
    """A protocol class for one server (`uvicorn.Config(http=...)`): its own connection table and limits, and
    `answer_headers` on the answers the guard gives itself (the app's middleware never sees those)."""
    base = _IMPLEMENTATIONS[http_impl]
    namespace = {"__module__": __name__, "limits": limits, "table": ConnectionTable(), "answer_headers": answer_headers}
    return type(base.__name__, (base,), namespace)
