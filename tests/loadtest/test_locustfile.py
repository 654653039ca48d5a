"""The Locust file, run as Locust runs it (a subprocess: Locust monkey-patches its process with gevent)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.servers import serve
from tests.server.conftest import REPO

LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
ROUTES = ("/fill-mask", "/classify-text", "/classify-image")


@pytest.fixture(scope="module")
def server(tiny_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tiny_config, workdir=tmp_path_factory.mktemp("locust-server"), name="locust") as started:
        yield started.url


def locust(host: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).with_name("locust")),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host",
        host,
        *args,
    ]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def requests_per_route(output: str) -> dict[str, tuple[int, int]]:
    """(requests, failures) per route from Locust's summary table."""
    found = {}
    for match in re.finditer(r"^POST\s+(\S+)\s+(\d+)\s+(\d+)\(", output, re.MULTILINE):
        found.setdefault(match[1], (int(match[2]), int(match[3])))
    return found


@pytest.mark.slow
def test_every_served_route_runs_without_failures(server: str) -> None:
    proc = locust(server, "-u", "4", "-r", "4", "-t", "5s", "--payloads", "4")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    counts = requests_per_route(output)
    assert set(ROUTES) <= set(counts), output
    assert all(n > 0 and failures == 0 for n, failures in counts.values()), counts
    assert re.search(r"Aggregated\s+\d+\s+0\(0\.00%\)", output), output


@pytest.mark.slow
def test_weights_select_routes(server: str) -> None:
    zero = {
        f"LOADTEST_WEIGHT_{r.strip('/').replace('-', '_').upper()}": "0"
        for r in ("/classify-text", "/classify-image", "/optical-flow", "/autoencode-video")
    }
    proc = locust(server, "-u", "2", "-r", "2", "-t", "3s", "--payloads", "2", env=zero)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert set(requests_per_route(output)) == {"/fill-mask"}, output


@pytest.mark.slow
def test_a_remote_host_is_refused() -> None:
    proc = locust("http://192.0.2.10:8000", "-u", "1", "-r", "1", "-t", "2s")
    assert proc.returncode == 2
    assert "not a loopback address" in proc.stderr and not requests_per_route(proc.stdout)
