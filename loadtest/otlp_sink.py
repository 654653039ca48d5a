"""A local OTLP/HTTP receiver for the load runner's `--compare observability`: it accepts trace exports on
POST /v1/traces and counts them, so the traced server pays the real cost of building, encoding and sending its spans
without a collector to install."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from loadtest.loopback import QuietHandler, loopback_server


@dataclass
class Received:
    exports: int = 0
    bytes: int = 0


@contextmanager
def otlp_sink() -> Iterator[tuple[str, Received]]:
    """(endpoint URL, counts) of a receiver on a free loopback port, for the duration of the block."""
    received = Received()
    lock = threading.Lock()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                received.exports += self.path == "/v1/traces"
                received.bytes += len(body)
            self.send_response(200 if self.path == "/v1/traces" else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse: all accepted
            self.end_headers()

    with loopback_server(Handler) as url:
        yield url, received
