"""What `perceiver-serve` writes to its log, as a process: every line in the chosen format (uvicorn's included), an
access line per request, the model's load and the drain, and never an API key or a body."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import REPO, free_port, models_table, wait_ready, write_config

pytestmark = pytest.mark.slow
KEY = "log-test-key-0123456789abcdef"
SECRET_TEXT = "a very private sentence [MASK]"


def run_server(tmp_path: Path, checkpoints: dict[str, Path], *args: str, requests: Callable[[str], Any]) -> str:
    """Start the server with `args`, run `requests(base_url)`, stop it with SIGTERM; its whole log."""
    table = models_table(checkpoints)
    config = write_config(tmp_path / "config.toml", {"server": {"device": "cpu"}, "models": {"mlm": table["mlm"]}})
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PERCEIVER_SERVE_API_KEYS": KEY, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--config", str(config), "--port", str(port), *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, timeout_s=60, exited=lambda: None if proc.poll() is None else log.read_text())
        requests(base)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return log.read_text()


def traffic(base: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as http:
        auth = {"Authorization": f"Bearer {KEY}", "X-Request-Id": "req-ok"}
        assert http.post("/fill-mask", json={"inputs": SECRET_TEXT}, headers=auth).status_code == 200
        assert http.post("/fill-mask", json={"inputs": SECRET_TEXT}, headers={"X-API-Key": "x" * 20}).status_code == 401
        assert http.post("/fill-mask?model=nope", json={"inputs": "x"}, headers={"X-API-Key": KEY}).status_code == 404
        assert http.get("/health/ready").status_code == 200


def test_json_logs_every_line_with_access_lines_and_no_secrets(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    text = run_server(tmp_path, checkpoints, "--log-format", "json", "--log-level", "debug", requests=traffic)
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one JSON object
    loggers = {e["logger"] for e in entries}
    assert "uvicorn.error" in loggers and "server.access" in loggers
    access = [e for e in entries if e["logger"] == "server.access"]
    (ok,) = [e for e in access if e.get("request_id") == "req-ok"]
    assert ok["route"] == "/fill-mask" and ok["status"] == 200 and ok["model"] == "mlm" and ok["batch_size"] == 1
    assert ok["client"].startswith("127.0.0.1:") and ok["bytes_in"] > 0 and ok["bytes_out"] > 0
    assert {e["status"] for e in access} >= {200, 401, 404}
    assert any(e["route"] == "/health/ready" and e["level"] == "debug" for e in access)
    (ready,) = [e for e in entries if "ready in" in e["message"]]
    assert ready["model"] == "mlm" and ready["request_id"] == "req-ok" and ready["duration_s"] > 0
    assert any(e["message"].startswith("draining") for e in entries)
    assert any(e["message"].startswith("drain finished") for e in entries)
    for secret in (KEY, "x" * 20, "Bearer", "very private"):
        assert secret not in text


def test_text_logs_at_warning_have_no_access_lines(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    text = run_server(tmp_path, checkpoints, "--log-format", "text", "--log-level", "warning", requests=traffic)
    assert "POST /fill-mask" not in text and "server.access" not in text and "INFO" not in text
    assert KEY not in text


def test_text_logs_at_info_name_each_request(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    text = run_server(tmp_path, checkpoints, "--log-format", "text", requests=traffic)
    (line,) = [x for x in text.splitlines() if "request_id=req-ok" in x and "server.access" in x]
    assert " INFO server.access: POST /fill-mask 200 " in line and "model=mlm" in line
    assert "Application startup complete" in text  # uvicorn's lines, in the same format
    assert KEY not in text
