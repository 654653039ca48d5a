"""SIGTERM on a real server process: readiness and new requests answer 503 at once, the request in flight
finishes with 200, and the process exits within its grace period."""

from __future__ import annotations

import os
import signal
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
def server_process(tmp_path: Path, checkpoints: dict[str, Path],
                   drain_s: float) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    models = {"mlm": {"task": "fill-mask", "source": str(checkpoints["mlm"]), "max_delay_ms": 0}}
    config = write_config(tmp_path / "serve.toml", {"server": {
        "device": "cpu", "drain_seconds": drain_s, "request_timeout_s": TIMEOUT_S, "preload": ["mlm"]},
        "models": models})
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONUNBUFFERED": "1",
           **slowed_env(tmp_path, FORWARD_S)}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--config", str(config), "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout_s=60, exited=lambda: None if proc.poll() is None else (tmp_path / "server.log")
                   .read_text())
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.close()


def start_long_request(base: str) -> tuple[threading.Thread, list[httpx.Response]]:
    """A fill-mask request, returned once it is inside the model (its forward takes FORWARD_S)."""
    answer: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answer.append(
        httpx.post(f"{base}/fill-mask", json={"inputs": "in flight [MASK]"}, timeout=60)))
    thread.start()
    deadline = time.monotonic() + 10
    while "perceiver_inflight_requests 1.0" not in httpx.get(f"{base}/metrics").text:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.05)
    time.sleep(0.3)  # admitted with an empty queue: in the model now, for FORWARD_S
    return thread, answer


def wait_exit(proc: subprocess.Popen[bytes], budget_s: float) -> float:
    started = time.monotonic()
    code = proc.wait(timeout=budget_s)
    assert code in (0, -signal.SIGTERM), code  # uvicorn re-raises the signal once it has shut down cleanly
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


def test_sigterm_without_a_drain_window_still_finishes_the_request_in_flight(tmp_path: Path,
                                                                               checkpoints: dict[str, Path]) -> None:
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
