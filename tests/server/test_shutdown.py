"""Signals on a real server process: readiness and new requests answer 503 at once, the request in flight
finishes with 200, and the process exits within its grace period. Whatever the signals (SIGTERM or SIGINT, once
or twice, with a drain window or not), every answer is the real result or the JSON error shape."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import REPO, free_port, wait_ready, write_config
from tests.server.support import assert_error
from tests.server.test_overload import slowed_env

pytestmark = pytest.mark.slow
FORWARD_S = 2.0  # each fill-mask forward sleeps this long (see test_overload.SLOW_FORWARD)
TIMEOUT_S = 20.0


@contextmanager
def server_process(
    tmp_path: Path, checkpoints: dict[str, Path], drain_s: float, **server: object
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    models = {"mlm": {"task": "fill-mask", "source": str(checkpoints["mlm"]), "max_delay_ms": 0}}
    config = write_config(
        tmp_path / "serve.toml",
        {
            "server": {
                "device": "cpu",
                "drain_seconds": drain_s,
                "request_timeout_s": TIMEOUT_S,
                "preload": ["mlm"],
                **server,
            },
            "models": models,
        },
    )
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONUNBUFFERED": "1",
        **slowed_env(tmp_path, FORWARD_S),
    }
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--config", str(config), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(
            base, timeout_s=60, exited=lambda: None if proc.poll() is None else (tmp_path / "server.log").read_text()
        )
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.close()


def start_long_request(base: str) -> tuple[threading.Thread, list[httpx.Response]]:
    """A fill-mask request, returned once it is inside the model (its forward takes FORWARD_S)."""
    answer: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: answer.append(httpx.post(f"{base}/fill-mask", json={"inputs": "in flight [MASK]"}, timeout=60))
    )
    thread.start()
    wait_in_flight(base)
    time.sleep(0.3)  # admitted with an empty queue: in the model now, for FORWARD_S
    return thread, answer


def wait_in_flight(base: str) -> None:
    deadline = time.monotonic() + 10
    while "perceiver_inflight_requests 1.0" not in httpx.get(f"{base}/metrics").text:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.05)


EXIT_CODES = {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 130}  # the signal re-raised after a clean shutdown


def wait_exit(proc: subprocess.Popen[bytes], budget_s: float, sig: int = signal.SIGTERM) -> float:
    started = time.monotonic()
    code = proc.wait(timeout=budget_s)
    assert code in (0, EXIT_CODES[sig]), code  # uvicorn re-raises the signal once it has shut down cleanly
    return time.monotonic() - started


def test_sigterm_drains(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    drain_s = 1.5
    with server_process(tmp_path, checkpoints, drain_s) as (base, proc):
        thread, answer = start_long_request(base)
        with httpx.Client(base_url=base, timeout=10) as probe:
            assert probe.get("/health/ready").status_code == 200
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.3)  # the handler runs on the server's next event-loop tick (<= 0.1 s)
            assert_error(probe.get("/health/ready"), 503, "not_ready", "shutting down")
            refused = probe.post("/fill-mask", json={"inputs": "late [MASK]"})
            assert_error(refused, 503, "not_ready", "shutting down")
            assert refused.headers["Retry-After"] == "1"
            assert probe.get("/health/live").status_code == 200  # alive, just leaving
        assert proc.poll() is None  # still draining
        thread.join(30)
        assert answer and answer[0].status_code == 200, answer  # the request in flight finished
        assert answer[0].json()[0]["sequence"].startswith("in flight ")
        wait_exit(proc, budget_s=drain_s + TIMEOUT_S + 5)
        assert time.monotonic() - signalled < drain_s + FORWARD_S + 5
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "draining" in log


def test_sigterm_without_a_drain_window_still_finishes_the_request_in_flight(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    with server_process(tmp_path, checkpoints, drain_s=0) as (base, proc):
        thread, answer = start_long_request(base)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # the listener is closed: new connections go elsewhere
            httpx.get(f"{base}/health/ready", timeout=5)
        thread.join(30)
        assert answer and answer[0].status_code == 200, answer
        wait_exit(proc, budget_s=TIMEOUT_S + 5)
        assert time.monotonic() - signalled < FORWARD_S + 5
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def send(proc: subprocess.Popen[bytes], sig: int, times: int) -> None:
    for _ in range(times):
        proc.send_signal(sig)
        time.sleep(0.3)  # each handled on its own event-loop tick


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(
    "times,drain_s", [(1, 0.0), (2, 0.0), (1, 1.5), (2, 6.0)], ids=["once", "twice", "once-drained", "twice-drained"]
)
def test_in_flight_work_is_answered_whatever_the_signals(
    tmp_path: Path, checkpoints: dict[str, Path], sig: int, times: int, drain_s: float
) -> None:
    with server_process(tmp_path, checkpoints, drain_s) as (base, proc):
        thread, answer = start_long_request(base)
        signalled = time.monotonic()
        send(proc, sig, times)
        if drain_s and times == 1:  # in the window, new work is refused in the error shape
            refused = httpx.post(f"{base}/fill-mask", json={"inputs": "late [MASK]"}, timeout=10)
            assert_error(refused, 503, "not_ready", "shutting down")
        thread.join(30)
        assert answer and answer[0].status_code == 200, answer  # a repeated signal never cuts it off
        assert answer[0].json()[0]["sequence"].startswith("in flight ")
        wait_exit(proc, budget_s=drain_s + TIMEOUT_S + 5, sig=sig)
        took = time.monotonic() - signalled
        assert took < (drain_s if times == 1 else 0) + FORWARD_S + 4  # a second signal skips the drain window
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log


@pytest.mark.parametrize(
    "sig,times,drain_s",
    [(signal.SIGTERM, 1, 0.0), (signal.SIGINT, 2, 1.0)],
    ids=["SIGTERM-once", "SIGINT-twice-drained"],
)
def test_a_request_still_running_when_the_grace_period_ends_gets_a_json_503(
    tmp_path: Path, checkpoints: dict[str, Path], sig: int, times: int, drain_s: float
) -> None:
    # request_timeout_s = 0.5: the grace period is int(0.5) + 5 s. A body that never comes outlasts it.
    with server_process(tmp_path, checkpoints, drain_s, request_timeout_s=0.5, body_timeout_s=60) as (base, proc):
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as upload:
            upload.sendall(
                b"POST /fill-mask HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            wait_in_flight(base)  # in the app, waiting for its body
            signalled = time.monotonic()
            send(proc, sig, times)
            response = b""
            while chunk := upload.recv(65536):
                response += chunk
        head, body = response.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 503 ") and b"content-type: application/json" in head.lower()
        assert b"connection: close" in head.lower(), head
        error = json.loads(body)["error"]
        assert error["code"] == "not_ready" and "shut down before the request finished" in error["message"]
        assert time.monotonic() - signalled >= 5 - 0.5  # not before the grace period (the drain: skipped by signal 2)
        wait_exit(proc, budget_s=30, sig=sig)
