"""The headless runner: a short sweep against real servers (batching on and off), and loopback only."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.report import BATCHING, COLUMNS, NO_BATCHING
from loadtest.run import run
from loadtest.target import TargetError, check_target, is_loopback
from tests.server.conftest import REPO


@pytest.mark.slow
def test_short_sweep_writes_the_report(config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    doc = run(
        [
            "--config",
            str(config_file),
            "--routes",
            "/fill-mask,/classify-image",
            "--concurrency",
            "1,4",
            "--max-requests",
            "10",
            "--duration-s",
            "20",
            "--payloads",
            "8",
            "--text-bytes",
            "100",
            "--out",
            str(out),
        ]
    )

    with (out / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    steps = {(r["variant"], r["route"], int(r["concurrency"])) for r in rows}
    assert steps == {
        (v, route, c) for v in (BATCHING, NO_BATCHING) for route in ("/fill-mask", "/classify-image") for c in (1, 4)
    }
    for r in rows:
        assert int(r["requests"]) == int(r["ok"]) == 10, r
        assert int(r["n_429"]) == int(r["n_other_errors"]) == 0 and float(r["error_rate"]) == 0
        assert float(r["rps"]) > 0 and 0 < float(r["p50_ms"]) <= float(r["p95_ms"]) <= float(r["p99_ms"])
        assert r["model"] == ("mlm" if r["route"] == "/fill-mask" else "conv")
        assert int(r["max_batch_size"]) == (4 if r["variant"] == BATCHING else 1)
        assert int(r["max_queue"]) == 64
        assert int(r["batches"]) >= 10 / int(r["max_batch_size"])
        assert float(r["server_cpu_ms_per_request"]) >= 0  # clock ticks (10 ms): 10 tiny requests may take fewer
    assert sum(float(r["server_cpu_ms_per_request"]) for r in rows) > 0
    batch = {(r["variant"], r["route"], int(r["concurrency"])): float(r["mean_batch_size"]) for r in rows}
    assert batch[BATCHING, "/fill-mask", 1] == 1.0  # one client: nobody to batch with
    assert batch[BATCHING, "/fill-mask", 4] > 1.5  # 4 clients, texts of one length, 50 ms to gather
    assert all(v == 1.0 for (variant, _, _), v in batch.items() if variant == NO_BATCHING)

    saved = json.loads((out / "report.json").read_text())
    assert saved["machine"]["cpus"] >= 1 and saved["command"].startswith("python -m loadtest.run --config")
    summary = saved["summary"]
    assert summary["checks"] == {"non_429_errors": 0, "n_429": 0, "429_within_queue_limit": []}
    fill = summary["routes"]["/fill-mask"]
    assert set(fill["batching_speedup"]) == {"1", "4"} and all(v > 0 for v in fill["batching_speedup"].values())
    assert fill["inprocess_batch_size"] == 4 and fill["inprocess_items_per_s"] > 0
    assert math.isclose(fill["server_efficiency"], fill["saturation_rps"] / fill["inprocess_items_per_s"])
    assert {m["route"] for m in saved["inprocess"]} == {"/fill-mask", "/classify-image"}
    for name in ("throughput.png", "latency.png", "batching.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "servers" / "server-no-batching.toml").read_text().count("max_batch_size = 1") == 5
    assert doc["summary"] == summary


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:1/", "http://127.3.2.1", "http://[::1]:8000"]
)
def test_loopback_targets_are_accepted(url: str) -> None:
    assert is_loopback(url)
    assert check_target(url, allow_remote=False) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://192.0.2.10:8000", "http://10.0.0.1", "http://[2001:db8::1]/"])
def test_other_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(TargetError, match="not a loopback address"):
        check_target(url, allow_remote=False)
    with pytest.raises(TargetError, match="not a loopback address"):
        run(["--url", url, "--out", "unused"])
    assert check_target(url, allow_remote=True) == url.rstrip("/")


def test_cli_refuses_a_remote_target_before_sending_anything(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.run", "--url", "http://192.0.2.10:8000", "--out", str(tmp_path / "r")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "not a loopback address" in proc.stderr and "--allow-remote" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:8000"])
def test_non_http_targets_are_refused(url: str) -> None:
    with pytest.raises(TargetError, match="not an http"):
        check_target(url, allow_remote=True)


@pytest.mark.slow
def test_observability_comparison_traces_and_logs_the_second_server(config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    doc = run(
        [
            "--config",
            str(config_file),
            "--routes",
            "/fill-mask",
            "--concurrency",
            "1,2",
            "--max-requests",
            "8",
            "--duration-s",
            "20",
            "--payloads",
            "4",
            "--no-inprocess",
            "--compare",
            "observability",
            "--out",
            str(out),
        ]
    )
    assert {r["variant"] for r in doc["rows"]} == {BATCHING, "observed"}
    cost = doc["observability_cost"]
    assert set(cost["throughput_ratio"]) == {"/fill-mask c=1", "/fill-mask c=2"} and cost["geomean"] > 0
    (note,) = [n for n in doc["notes"] if n.startswith("OTLP receiver")]
    assert int(note.split(": ")[1].split()[0]) > 0  # the traced server exported its spans
    observed_log = (out / "servers" / "server-observed.log").read_text().splitlines()
    access = [json.loads(line) for line in observed_log if '"server.access"' in line]
    assert len(access) >= 16 and {a["route"] for a in access} >= {"/fill-mask"}
    quiet_log = (out / "servers" / f"server-{BATCHING}.log").read_text()
    assert "server.access" not in quiet_log


@pytest.mark.slow
def test_naive_comparison_runs_the_peer_beside_the_server_on_the_same_weights(
    config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    args = ["--config", str(config_file), "--routes", "/fill-mask", "--concurrency", "2", "--max-requests", "6"]
    args += ["--duration-s", "20", "--payloads", "4", "--no-inprocess", "--compare", "naive", "--out", str(out)]
    doc = run(args)
    rows = {r["variant"]: r for r in doc["rows"]}
    assert set(rows) == {BATCHING, NO_BATCHING, "naive"}
    assert rows["naive"]["requests"] == 6 and rows["naive"]["n_other_errors"] == 0
    for variant in (BATCHING, NO_BATCHING):
        assert set(doc["over_naive"][variant]["throughput_ratio"]) == {"/fill-mask c=2"}
