"""The naive peer (loadtest.naive): transformers' fill-mask the obvious way, on a tiny checkpoint."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from loadtest.naive import build_app
from loadtest.target import ModelShapes


def test_it_answers_fill_mask_and_what_the_runner_discovers(tiny_models: dict[str, dict[str, Any]]) -> None:
    source = tiny_models["mlm"]["source"]
    with TestClient(build_app(source)) as client:
        one = client.post("/fill-mask", json={"inputs": "Hello [MASK]orld [MASK]", "top_k": 3})
        assert one.status_code == 200
        assert len(one.json()) == 2 and all(len(ranked) == 3 for ranked in one.json())  # per mask, best first
        assert one.json()[0][0]["score"] >= one.json()[0][1]["score"]
        two = client.post("/fill-mask", json={"inputs": ["a [MASK]", "b [MASK]"]}).json()
        assert len(two) == 2 and len(two[0][0]) == 5
        models = client.get("/v1/models").json()["models"]
        expected = {"name": "naive", "task": "fill-mask", "status": "ready", "source": source, "is_default": True}
        assert models == [expected]
        assert "/fill-mask" in client.get("/openapi.json").json()["paths"]
        assert client.get("/metrics").text == "" and client.get("/health/ready").status_code == 200
    assert ModelShapes.from_source(source).max_tokens > 0
