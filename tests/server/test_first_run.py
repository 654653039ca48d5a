"""A first run as a new user makes it: the demo with API keys from the environment, the documented model names,
the random-weights header on every answer, probes open as documented, and start-up checks of local sources."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from server.cli import _check_sources
from server.models.catalog import CATALOG
from server.models.demo import DEMO_MODELS
from server.settings import Settings, build_settings
from tests.server.tasks.test_image_classification import png
from tests.server.test_cli import run_main

KEY = "first-run-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_the_demo_answers_to_every_catalog_name() -> None:
    demo_names = {name for m in DEMO_MODELS for name in (m.name, *m.aliases)}
    catalog_names = {name for entry in CATALOG for name in (entry["name"], *entry.get("aliases", []))}
    assert catalog_names <= demo_names
    # The names of earlier demo versions keep working.
    assert {"demo-fill-mask", "demo-vision-conv", "demo-optical-flow", "demo-multimodal"} <= demo_names


def test_the_demo_flow_and_video_models_get_the_catalogs_deadlines(tmp_path: Path) -> None:
    from server.models.demo import demo_settings

    settings = demo_settings(build_settings({"server": {"demo_dir": str(tmp_path)}}))
    catalog = build_settings({})
    for name in ("optical-flow-perceiver", "multimodal-perceiver"):
        assert settings.models[name].request_timeout_s == catalog.models[name].request_timeout_s is not None
    assert settings.models["language-perceiver"].request_timeout_s is None


@pytest.mark.slow
def test_demo_with_keys_from_the_environment(spawn_server: Callable[..., str], tmp_path: Path) -> None:
    base = spawn_server("--demo", "--demo-dir", str(tmp_path / "demo"), env={"PERCEIVER_SERVE_API_KEYS": KEY})
    marked = "X-Perceiver-Random-Weights"
    # The documented examples, as written: catalog names on the task routes and under /v2.
    r = httpx.post(f"{base}/fill-mask?model=language-perceiver", json={"inputs": "Hi [MASK]"}, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.headers[marked] == "true" and r.headers["X-Model"] == "language-perceiver"
    r = httpx.post(f"{base}/classify-image?model=fourier", content=png(), headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.headers["X-Model"] == "vision-perceiver-fourier"
    r = httpx.get(f"{base}/v2/models/language-perceiver", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["name"] == "language-perceiver"
    # Errors and probes say so too: the middleware's, the auth's, the router's.
    answers = {
        "no key": httpx.post(f"{base}/fill-mask", json={"inputs": "a [MASK]"}, timeout=30),
        "unknown model": httpx.post(f"{base}/fill-mask?model=nope", json={"inputs": "a"}, headers=AUTH, timeout=30),
        "unknown path": httpx.get(f"{base}/nowhere", headers=AUTH, timeout=30),
        "probe": httpx.get(f"{base}/health/ready", timeout=30),
    }
    assert {k: r.status_code for k, r in answers.items()} == {
        "no key": 401,
        "unknown model": 404,
        "unknown path": 404,
        "probe": 200,
    }
    assert all(r.headers.get(marked) == "true" for r in answers.values()), {k: r.headers for k, r in answers.items()}
    # ... a body refused from its declared size, and what the connection guard answers before the app sees the
    # request (431: headers too large).
    too_large = f"POST /fill-mask HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {2**40}\r\n"
    for request, status in ((too_large.encode(), b"413"), (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000, b"431")):
        head = _raw(base, request + b"\r\n\r\n")
        assert head.startswith(b"http/1.1 " + status) and b"x-perceiver-random-weights: true" in head, head
    # docs/server.md: the /v2 health routes are probes (open); the rest of /v2 needs the key.
    assert httpx.get(f"{base}/v2/health/live", timeout=30).status_code == 200
    assert httpx.get(f"{base}/v2/health/ready", timeout=30).status_code == 200
    assert httpx.get(f"{base}/v2", timeout=30).status_code == 401


def _raw(base: str, request: bytes) -> bytes:
    """The head of the answer to bytes sent as they are, lower-cased."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(request)
        return conn.recv(65536).split(b"\r\n\r\n")[0].lower()


def _settings_with_missing_source(tmp_path: Path) -> tuple[Settings, Path]:
    missing = tmp_path / "not-there"
    models = {"mlm": {"task": "fill-mask", "source": str(missing)}}
    return build_settings({"server": {"catalog": False}, "models": models}), missing


def test_a_missing_local_source_is_a_warning_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings, missing = _settings_with_missing_source(tmp_path)
    with caplog.at_level(logging.WARNING, logger="server.cli"):
        assert _check_sources(settings) == [f"model 'mlm': source {missing} does not exist"]
    assert f"source {missing} does not exist" in caplog.text and "503" in caplog.text


def test_a_missing_local_source_stops_a_strict_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, missing = _settings_with_missing_source(tmp_path)
    config = tmp_path / "serve.toml"
    config.write_text(f'[models.mlm]\ntask = "fill-mask"\nsource = "{missing}"\n')
    assert run_main("--strict", "--config", str(config)) == 2
    assert f"source {missing} does not exist" in capsys.readouterr().err


def test_hub_ids_and_folders_are_no_problem(checkpoints: dict[str, Path]) -> None:
    models = {
        "mlm": {"task": "fill-mask", "source": str(checkpoints["mlm"])},
        "hub": {"task": "fill-mask", "source": "deepmind/language-perceiver"},
    }
    assert _check_sources(build_settings({"server": {"catalog": False}, "models": models})) == []
