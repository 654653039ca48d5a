"""Discovery: routes with a default model, shapes from the model's folder, the API key on every call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.loopback import QuietHandler, loopback_server
from loadtest.payloads import ModelShapes
from loadtest.target import TargetError, auth_headers, discover
from tests.server.conftest import CONFIGS


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """/openapi.json with three task routes; /v1/models with a default and a second fill-mask model."""
    flow = tmp_path / "flow"
    flow.mkdir()
    (flow / "config.json").write_text(json.dumps(CONFIGS["flow"]))
    models = [
        {"name": "other", "task": "fill-mask", "source": "x/y", "status": "ready", "is_default": False},
        {
            "name": "fm",
            "task": "fill-mask",
            "source": "deepmind/language-perceiver",
            "status": "unloaded",
            "is_default": True,
        },
        {"name": "of", "task": "optical-flow", "source": str(flow), "status": "ready", "is_default": True},
        {"name": "img", "task": "image-classification", "source": "z", "status": "ready", "is_default": True},
    ]
    bodies = {
        "/openapi.json": {"paths": {"/fill-mask": {}, "/optical-flow": {}, "/classify-text": {}, "/health/live": {}}},
        "/v1/models": {"models": models},
    }
    seen: list[dict[str, str]] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            body = json.dumps(bodies[self.path]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_server(Handler) as url:
        yield url, seen


def test_routes_need_both_the_route_and_a_model(fake_server: tuple[str, list[dict[str, str]]]) -> None:
    base, seen = fake_server
    found = discover(base, headers=auth_headers("k" * 20))
    # /classify-text: no model of its task; /classify-image: no such route on this server.
    assert set(found) == {"/fill-mask", "/optical-flow"}
    assert (found["/fill-mask"].model, found["/fill-mask"].status) == ("fm", "unloaded")
    assert found["/fill-mask"].shapes == ModelShapes()  # a hub id: the DeepMind sizes
    assert found["/optical-flow"].shapes.flow_size == (48, 64)  # read from the model's config.json
    assert [h.get("Authorization") for h in seen] == [f"Bearer {'k' * 20}"] * 2


def test_no_key_no_header() -> None:
    assert auth_headers(None) == auth_headers("") == {}


def test_an_unreachable_target_is_a_clear_error() -> None:
    with pytest.raises(TargetError, match="GET http://127.0.0.1:9/openapi.json failed"):
        discover("http://127.0.0.1:9")
