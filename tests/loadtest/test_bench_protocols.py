"""The protocol benchmark runs end to end on tiny models: every transport answers every request, and the ratios are
computed against HTTP/binary."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.bench_protocols import TRANSPORTS, Step, ratios, run

pytestmark = pytest.mark.slow


def test_three_transports_side_by_side(config_file: Path, tmp_path: Path) -> None:
    argv = ["--config", str(config_file), "--clients", "1,2", "--duration-s", "0.3", "--warmup-s", "0.1"]
    doc = run([*argv, "--payloads", "3", "--out", str(tmp_path / "out")])
    assert {(s["task"], s["clients"], s["transport"]) for s in doc["steps"]} == {
        (task, clients, transport)
        for task in ("fill-mask", "classify-image")
        for clients in (1, 2)
        for transport in TRANSPORTS
    }
    assert all(s["errors"] == 0 and s["requests"] > 0 for s in doc["steps"])
    assert [(r["task"], r["clients"]) for r in doc["ratios"]] == [
        ("fill-mask", 1),
        ("fill-mask", 2),
        ("classify-image", 1),
        ("classify-image", 2),
    ]
    assert doc["models"] == {"fill-mask": "mlm", "classify-image": "conv"}
    assert (tmp_path / "out" / "protocols.json").exists()


def test_ratios_are_over_http_binary() -> None:
    steps = [
        Step("fill-mask", 1, "grpc", 30, 0, 1.0, 1.0, 2.0),
        Step("fill-mask", 1, "http-binary", 20, 0, 1.0, 1.0, 2.0),
        Step("fill-mask", 1, "http-json", 10, 1, 1.0, 1.0, 2.0),
    ]
    (row,) = ratios(steps)
    assert (row["grpc_over_binary"], row["json_over_binary"], row["errors"]) == (1.5, 0.5, 1)
