"""Slow and idle clients, through a real server process: the connection cap, the header and body deadlines,
the header-size cap and idle keep-alive, while normal clients are served. The guard over h11 runs in a server
thread (the command line always serves httptools)."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.app import build_app
from server.http.connections import protocol_class
from server.limits import Limits
from server.settings import Settings
from tests.server.conftest import serve_in_thread

pytestmark = pytest.mark.slow
HEADER_S, BODY_S, KEEP_ALIVE_S = 1.0, 1.5, 1.0
MAX_CONNECTIONS, MAX_HEADER_KB = 50, 4
SLACK_S = 1.0  # scheduling on a loaded machine: a deadline is met within this
HEAD = b"GET /health/live HTTP/1.1\r\nHost: test\r\n"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self, status: int, code: str, *needles: str) -> str:
        """Asserts the one error shape with this status and code, closing the connection; returns the message."""
        assert self.status == status, (self.status, self.body)
        assert self.headers["content-type"] == "application/json" and self.headers["connection"] == "close"
        error = json.loads(self.body)["error"]
        assert error["code"] == code and error["status"] == status, error
        for needle in needles:
            assert needle in error["message"], (needle, error)
        return error["message"]

    def v2_error(self, status: int, *needles: str) -> str:
        """Asserts the Open Inference Protocol's error shape, {"error": "message"}, closing the connection."""
        assert self.status == status, (self.status, self.body)
        assert self.headers["content-type"] == "application/json" and self.headers["connection"] == "close"
        body = json.loads(self.body)
        assert set(body) == {"error"} and all(needle in body["error"] for needle in needles), body
        return body["error"]


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.settimeout(10)
    return sock


def read_answer(sock: socket.socket) -> Answer | None:
    """One response (by Content-Length), or None when the server closed the connection without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            assert not data, data
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the answer was cut short"
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body)


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (EOF), waiting at most the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    return fn(), time.monotonic() - started


@pytest.fixture(scope="module")
def guarded(spawn_server: Callable[..., str], models_for, toml_writer, tmp_path_factory) -> str:
    models = {"mlm": {**models_for()["mlm"], "max_delay_ms": 0}}
    config = toml_writer(
        tmp_path_factory.mktemp("connections") / "serve.toml",
        {
            "server": {
                "device": "cpu",
                "preload": ["mlm"],
                "max_connections": MAX_CONNECTIONS,
                "header_timeout_s": HEADER_S,
                "body_timeout_s": BODY_S,
                "keep_alive_s": KEEP_ALIVE_S,
                "max_header_kb": MAX_HEADER_KB,
                "max_body_mb": 1,
                "request_timeout_s": 10,
            },
            "models": models,
        },
    )
    return spawn_server("--config", str(config), "--log-level", "warning")


# ------------------------------------------------------------------------------ the header deadline


def test_a_connection_that_sends_nothing_is_answered_408_and_closed(guarded: str) -> None:
    with closing(connect(guarded)) as sock:
        answer, seconds = timed(lambda: read_answer(sock))
        assert isinstance(answer, Answer)
        answer.error(408, "request_timeout", f"within {HEADER_S:g}s")
        assert HEADER_S - 0.1 < seconds < HEADER_S + SLACK_S
        assert closed(sock)


@pytest.mark.parametrize("sent", [b"G", HEAD, HEAD + b"X-Slow: yes\r\n"])
def test_headers_must_be_complete_within_the_deadline_however_far_they_got(guarded: str, sent: bytes) -> None:
    with closing(connect(guarded)) as sock:
        sock.sendall(sent)
        answer, seconds = timed(lambda: read_answer(sock))
        assert isinstance(answer, Answer)
        answer.error(408, "request_timeout")
        assert seconds < HEADER_S + SLACK_S


def drip_until_answered(sock: socket.socket, drop: bytes, *, every_s: float) -> Answer:
    """Send `drop` every `every_s` until the server answers (a close without an answer fails the test)."""
    sock.settimeout(every_s)
    while True:
        try:
            sock.sendall(drop)
            answer = read_answer(sock)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            pytest.fail("closed without an answer")
        if answer is not None:
            return answer


def test_a_trickle_of_header_bytes_does_not_extend_the_deadline(guarded: str) -> None:
    with closing(connect(guarded)) as sock:
        started = time.monotonic()
        sock.sendall(HEAD)
        drip_until_answered(sock, b"X-Drip: 1\r\n", every_s=0.2).error(408, "request_timeout")
        assert time.monotonic() - started < HEADER_S + SLACK_S


def test_on_a_kept_alive_connection_the_deadline_starts_at_the_next_requests_first_byte(guarded: str) -> None:
    with closing(connect(guarded)) as sock:
        sock.sendall(HEAD + b"\r\n")
        assert read_answer(sock) is not None
        for _ in range(3):  # idle, then the headers, each well inside its limit; from the last answer, not
            time.sleep(HEADER_S / 2)
            sock.sendall(HEAD)
            time.sleep(HEADER_S / 2)
            sock.sendall(b"\r\n")
            answer = read_answer(sock)
            assert answer is not None and answer.status == 200 and json.loads(answer.body) == {"status": "ok"}
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")
        answer, seconds = timed(lambda: read_answer(sock))
        assert isinstance(answer, Answer)
        answer.error(408, "request_timeout")
        assert HEADER_S - 0.1 < seconds < HEADER_S + SLACK_S


# ------------------------------------------------------------------------------ idle keep-alive


def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_s(guarded: str) -> None:
    with closing(connect(guarded)) as sock:
        sock.sendall(HEAD + b"\r\n")
        assert read_answer(sock) is not None
        sock.sendall(HEAD + b"\r\n")  # reused within keep_alive_s: served on the same connection
        first = read_answer(sock)
        assert first is not None and first.status == 200
        answer, seconds = timed(lambda: read_answer(sock))
        assert answer is None  # closed quietly: no request was waiting for an answer
        assert KEEP_ALIVE_S - 0.1 < seconds < KEEP_ALIVE_S + SLACK_S


# ------------------------------------------------------------------------------ the header-size cap


@pytest.mark.parametrize(
    "head",
    [
        HEAD + b"X-Big: " + b"a" * (MAX_HEADER_KB * 1024) + b"\r\n\r\n",  # one header, all at once
        b"GET /health/live?" + b"q" * (MAX_HEADER_KB * 1024) + b" HTTP/1.1\r\nHost: test\r\n\r\n",  # the URL
        HEAD + b"X-Endless: " + b"a" * (MAX_HEADER_KB * 1024 + 1),  # a header that never ends
    ],
    ids=["header", "url", "unfinished"],
)
def test_headers_over_the_cap_are_answered_431(guarded: str, head: bytes) -> None:
    with closing(connect(guarded)) as sock:
        sock.sendall(head)
        answer = read_answer(sock)
        assert answer is not None
        answer.error(431, "headers_too_large", f"{MAX_HEADER_KB} KiB")
        assert closed(sock)


def test_under_v2_the_guard_and_the_body_deadline_answer_in_the_protocols_shape(guarded: str) -> None:
    big = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (MAX_HEADER_KB * 1024) + b"\r\n\r\n"
    stalled = (
        b"POST /v2/models/mlm/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    for head, status, needle in ((big, 431, f"{MAX_HEADER_KB} KiB"), (stalled, 408, f"within {BODY_S:g}s")):
        with closing(connect(guarded)) as sock:
            sock.sendall(head)
            answer = read_answer(sock)
            assert answer is not None
            answer.v2_error(status, needle)


def test_many_small_headers_count_together(guarded: str) -> None:
    with closing(connect(guarded)) as sock:
        sock.sendall(HEAD)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for i in range(MAX_HEADER_KB * 1024):  # each line fits, the lot does not
                sock.sendall(b"X-N%d: v\r\n" % i)
                time.sleep(0.0002 if i % 64 == 0 else 0)
            sock.sendall(b"\r\n")
            pytest.fail("never refused")
    with closing(connect(guarded)) as sock:
        sock.sendall(HEAD + b"".join(b"X-N%d: v\r\n" % i for i in range(MAX_HEADER_KB * 1024 // 20)) + b"\r\n")
        answer = read_answer(sock)
        assert answer is not None and answer.status == 200, answer  # under the cap: served


def test_headers_just_under_the_cap_are_served_with_a_large_body(guarded: str) -> None:
    text = "x [MASK] " + "y" * 200_000  # header and body in one write: only the header counts
    body = json.dumps({"inputs": text}).encode()
    head = (
        b"POST /fill-mask HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nX-Pad: %s\r\n\r\n" % (len(body), b"p" * (MAX_HEADER_KB * 1024 - 200))
    )
    with closing(connect(guarded)) as sock:
        sock.sendall(head + body)
        answer = read_answer(sock)
        assert answer is not None and answer.status != 431, answer
        assert answer.status in (200, 413), answer  # the app's own verdict on the text


# ------------------------------------------------------------------------------ the body deadline


@pytest.mark.parametrize(
    "route,content_type",
    [
        ("/fill-mask", b"application/json"),  # read by a middleware
        ("/classify-image", b"image/png"),
    ],
)  # read by the route
def test_a_body_that_does_not_arrive_in_time_is_answered_408(guarded: str, route: str, content_type: bytes) -> None:
    with closing(connect(guarded)) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: %s\r\nContent-Length: 100\r\n\r\n{"
            % (route.encode(), content_type)
        )
        answer, seconds = timed(lambda: read_answer(sock))
        assert isinstance(answer, Answer)
        answer.error(408, "request_timeout", f"within {BODY_S:g}s")
        assert "x-request-id" in answer.headers  # answered by the app
        assert BODY_S - 0.1 < seconds < BODY_S + SLACK_S
        assert closed(sock)


def test_a_trickled_body_gets_no_more_time_than_a_stalled_one(guarded: str) -> None:
    with closing(connect(guarded)) as sock:
        sock.sendall(
            b"POST /fill-mask HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        drip_until_answered(sock, b" ", every_s=0.1).error(408, "request_timeout")
        assert time.monotonic() - started < BODY_S + SLACK_S


@pytest.mark.parametrize(
    "head,status",
    [
        (b"POST /fill-mask HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n", 413),  # declared
        (b"POST /v1/models HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n", 405),  # never read
    ],
    ids=["too-large", "not-read"],
)
def test_a_body_still_trickling_after_an_early_answer_is_cut(guarded: str, head: bytes, status: int) -> None:
    with closing(connect(guarded)) as sock:  # answered before a byte of the body is read
        sock.sendall(head + b"Host: test\r\n\r\n{")
        started = time.monotonic()
        answer = read_answer(sock)
        assert answer is not None and answer.status == status
        sock.settimeout(0.1)
        while True:
            try:
                sock.sendall(b" ")
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            assert time.monotonic() - started < BODY_S + SLACK_S, "the trickle was never cut"
        assert BODY_S - 0.1 < time.monotonic() - started < BODY_S + SLACK_S


# ------------------------------------------------------------------------------ the connection cap


def waiting_connections(base: str, count: int) -> list[socket.socket]:
    """`count` connections, oldest first, each part-way through its request headers."""
    socks = []
    for _ in range(count):
        sock = connect(base)
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")
        socks.append(sock)
    return socks


def test_at_the_cap_a_new_connection_evicts_the_longest_waiting_header_reader(guarded: str) -> None:
    socks = waiting_connections(guarded, MAX_CONNECTIONS)
    try:
        time.sleep(0.1)  # the server has taken them all in
        for evicted in socks[:2]:  # each newcomer makes room by closing the oldest waiter, not an idle newcomer
            newcomer = connect(guarded)
            socks.append(newcomer)  # stays open, idle
            newcomer.sendall(HEAD + b"\r\n")
            served = read_answer(newcomer)
            assert served is not None and served.status == 200
            answer = read_answer(evicted)
            assert answer is not None
            assert answer.headers["retry-after"] == "1"
            answer.error(503, "not_ready", "make room", "headers were not complete")
        readable, _, _ = select.select(socks[2:], [], [], 0.05)
        assert readable == []  # the rest still wait (until their own header deadline), the newcomers idle
    finally:
        for sock in socks:
            sock.close()


def test_at_the_cap_idle_connections_go_first_quietly_when_no_one_waits_for_headers(guarded: str) -> None:
    socks = [connect(guarded) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in socks:  # each served once, then idle on keep-alive
            sock.sendall(HEAD + b"\r\n")
            assert read_answer(sock) is not None
        with closing(connect(guarded)) as newcomer:
            newcomer.sendall(HEAD + b"\r\n")
            served = read_answer(newcomer)
            assert served is not None and served.status == 200
        socks[0].settimeout(SLACK_S)
        assert read_answer(socks[0]) is None  # the longest idle: closed without a word
        readable, _, _ = select.select(socks[1:], [], [], 0.05)
        assert readable == []  # the others are still open
    finally:
        for sock in socks:
            sock.close()


def test_when_every_connection_has_a_request_in_progress_a_new_one_gets_503(guarded: str) -> None:
    socks: list[socket.socket] = []
    try:
        for i in range(MAX_CONNECTIONS):  # headers complete, body awaited: in progress, not to be evicted
            if i == MAX_CONNECTIONS - 1:  # all in the app but the last, whose place the metrics request takes
                deadline, gauge = time.monotonic() + 5, f"perceiver_inflight_requests {MAX_CONNECTIONS - 1}.0"
                while gauge not in httpx.get(f"{guarded}/metrics").text:
                    assert time.monotonic() < deadline, "the requests never started"
            socks.append(connect(guarded))
            socks[-1].sendall(
                b"POST /fill-mask HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
        with closing(connect(guarded)) as newcomer:  # the last one is in progress too, or too new to evict
            answer = read_answer(newcomer)
            assert answer is not None and answer.headers["retry-after"] == "1"
            answer.error(503, "not_ready", "no room for another connection")
        for sock in socks:  # and each of them still gets its own answer
            answer = read_answer(sock)
            assert answer is not None
            answer.error(408, "request_timeout")
    finally:
        for sock in socks:
            sock.close()


# Slow clients, in a process of their own (as they would be): each sends a header line every 0.2 s; cut, it
# comes back a moment later. Prints "flooding" once they are all on, and the outcomes as JSON at the end.
TRICKLERS = """
import asyncio, json, sys, time

host, port, count, run_s, comeback_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(float, sys.argv[4:6])
outcomes = []


async def trickle(stop):
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(host, port)
        opened, outcome = time.monotonic(), None
        try:
            writer.write(b"GET /health/live HTTP/1.1\\r\\nHost: test\\r\\n")
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.2)
                except TimeoutError:
                    writer.write(b"X-Drip: 1\\r\\n")
                    continue
                outcome = data.split(b"\\r\\n", 1)[0].decode() if data else "closed without an answer"
                break
        except ConnectionResetError:
            outcome = "reset"
        finally:
            writer.close()
        if outcome is not None:
            outcomes.append((outcome, time.monotonic() - opened))
            await asyncio.sleep(comeback_s)


async def main():
    stop = asyncio.Event()
    tasks = [asyncio.create_task(trickle(stop)) for _ in range(count)]
    await asyncio.sleep(0.5)
    print("flooding", flush=True)
    await asyncio.sleep(run_s)
    stop.set()
    await asyncio.gather(*tasks)


asyncio.run(main())
print(json.dumps(outcomes))
"""


def test_a_flood_of_trickling_clients_is_cut_while_normal_clients_are_served(guarded: str) -> None:
    host, port = guarded.removeprefix("http://").split(":")
    run_s = 3.0
    flood = subprocess.Popen(
        [sys.executable, "-c", TRICKLERS, host, port, str(4 * MAX_CONNECTIONS), str(run_s), "1.0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    statuses: list[int | str] = []
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == "flooding"
        pooled = httpx.Client(base_url=guarded, timeout=10)  # reuses its connection
        fresh = httpx.Client(base_url=guarded, timeout=10, limits=httpx.Limits(max_keepalive_connections=0))
        with pooled, fresh:
            deadline = time.monotonic() + run_s - 0.5
            while time.monotonic() < deadline:
                for client in (pooled, fresh):
                    r = client.post("/fill-mask", json={"inputs": "still [MASK] here"})
                    statuses.append(r.status_code if r.status_code == 200 else r.text)
        out, _ = flood.communicate(timeout=30)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait(10)
    assert flood.returncode == 0
    outcomes = [(kind, seconds) for kind, seconds in json.loads(out.splitlines()[-1])]
    assert len(statuses) >= 10 and set(statuses) == {200}, [s for s in statuses if s != 200]
    kinds = {kind for kind, _ in outcomes}
    assert kinds <= {"HTTP/1.1 408 Request Timeout", "HTTP/1.1 503 Service Unavailable", "reset"}, kinds
    assert "HTTP/1.1 503 Service Unavailable" in kinds  # the cap made room by evicting slow clients
    assert sum(kind == "reset" for kind, _ in outcomes) < len(outcomes) // 10, outcomes
    assert max(seconds for _, seconds in outcomes) < HEADER_S + SLACK_S  # nobody trickles past the deadline


# ------------------------------------------------------------------------------ the same guard over h11


def h11_server(settings: Settings) -> AbstractContextManager[str]:
    server = settings.server
    return serve_in_thread(
        build_app(settings),
        ws="none",
        http=protocol_class(Limits.of(server).connections, "h11"),
        timeout_keep_alive=server.keep_alive_s,
    )


def test_the_guard_works_over_h11_too(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(
        server={
            "max_connections": 4,
            "header_timeout_s": HEADER_S,
            "body_timeout_s": BODY_S,
            "keep_alive_s": KEEP_ALIVE_S,
            "max_header_kb": MAX_HEADER_KB,
        }
    )
    with h11_server(settings) as base:
        with closing(connect(base)) as sock:  # silent
            answer, seconds = timed(lambda: read_answer(sock))
            assert isinstance(answer, Answer) and seconds < HEADER_S + SLACK_S
            answer.error(408, "request_timeout")
        with closing(connect(base)) as sock:  # kept alive, then a request that stalls
            sock.sendall(HEAD + b"\r\n")
            assert read_answer(sock) is not None
            sock.sendall(b"GET /health/live HTTP/1.1\r\n")
            answer = read_answer(sock)
            assert answer is not None
            answer.error(408, "request_timeout")
        with closing(connect(base)) as sock:  # a header that never ends
            sock.sendall(HEAD + b"X-Endless: " + b"a" * (MAX_HEADER_KB * 1024 + 1))
            answer = read_answer(sock)
            assert answer is not None
            answer.error(431, "headers_too_large")
        with closing(connect(base)) as sock:  # not HTTP
            sock.sendall(b"\x16\x03\x01 hello\r\n\r\n")
            answer = read_answer(sock)
            assert answer is not None
            answer.error(400, "bad_request")
        socks = waiting_connections(base, 4)
        try:
            time.sleep(0.1)
            with closing(connect(base)) as newcomer:
                newcomer.sendall(HEAD + b"\r\n")
                served = read_answer(newcomer)
                assert served is not None and served.status == 200
            answer = read_answer(socks[0])
            assert answer is not None
            answer.error(503, "not_ready", "make room")
        finally:
            for sock in socks:
                sock.close()
