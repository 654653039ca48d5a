"""Every route in-process (httpx over ASGI, lifespan run), with the test checkpoints."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from server.app import build_app
from server.settings import Settings
from tests.server.support import open_client

pytestmark = pytest.mark.anyio

METRIC_NAMES = [
    "perceiver_requests_total",
    "perceiver_request_duration_seconds",
    "perceiver_queue_wait_seconds",
    "perceiver_inference_duration_seconds",
    "perceiver_batch_size",
    "perceiver_queue_depth",
    "perceiver_inflight_requests",
    "perceiver_model_load_seconds",
    "perceiver_models_loaded",
    "perceiver_device_memory_used_bytes",
    "perceiver_device_memory_capacity_bytes",
    "perceiver_model_load_failures_total",
    "perceiver_requests_dropped_total",
]


def image_bytes(seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(build_app(make_settings(server={"max_body_mb": 0.5, "max_inputs": 4}))) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    for needle in needles:
        assert needle in body["error"]["message"]
    return body


async def test_fill_mask(client: httpx.AsyncClient) -> None:
    r = await client.post("/fill-mask", json={"inputs": "Hello [MASK]orld", "parameters": {"top_k": 3}})
    assert r.status_code == 200, r.text
    candidates = r.json()
    assert len(candidates) == 3 and set(candidates[0]) == {"score", "token", "token_str", "sequence", "run"}
    assert float(r.headers["X-Queue-Time-Ms"]) >= 0 and float(r.headers["X-Inference-Time-Ms"]) > 0
    assert r.headers["X-Model"] == "mlm" and "X-Perceiver-Random-Weights" not in r.headers
    assert r.headers["X-Request-Id"]

    r = await client.post("/fill-mask", json={"inputs": ["a[MASK]", "b[MASK][MASK]c"]})
    one, two = r.json()
    assert len(one) == 5 and len(two) == 2 and len(two[0]) == 5  # per input; per mask when several


async def test_classify_text(client: httpx.AsyncClient) -> None:
    r = await client.post("/classify-text", json={"inputs": "what a film"})
    assert r.status_code == 200, r.text
    [labels] = r.json()
    assert {x["label"] for x in labels} == {"negative", "neutral", "positive"}
    r = await client.post(
        "/classify-text?model=sentiment",
        json={"inputs": ["a", "b"], "parameters": {"top_k": 1, "function_to_apply": "sigmoid"}},
    )
    assert [len(x) for x in r.json()] == [1, 1]


async def test_classify_image_every_encoding(client: httpx.AsyncClient) -> None:
    data = image_bytes()
    raw = await client.post("/classify-image", content=data)
    assert raw.status_code == 200, raw.text
    assert len(raw.json()) == 4 and raw.json()[0]["label"] in {"tabby cat", "golden retriever", "espresso", "volcano"}
    typed = await client.post("/classify-image?top_k=2", content=data, headers={"Content-Type": "image/png"})
    upload = await client.post("/classify-image", files={"file": ("cat.png", data, "image/png")})
    b64 = base64.b64encode(data).decode()
    as_json = await client.post("/classify-image", json={"inputs": b64, "parameters": {"top_k": 2}})
    data_url = await client.post("/classify-image", json={"inputs": f"data:image/png;base64,{b64}"})
    assert typed.json() == as_json.json() == raw.json()[:2]
    assert upload.json() == data_url.json() == raw.json()


async def test_image_model_choice(client: httpx.AsyncClient) -> None:
    data = image_bytes(seed=3)
    default = await client.post("/classify-image", content=data)
    alias = await client.post("/classify-image?model=c", content=data)
    other = await client.post("/classify-image?model=conv-b", content=data)
    assert default.headers["X-Model"] == alias.headers["X-Model"] == "conv"
    assert other.headers["X-Model"] == "conv-b" and other.headers["X-Perceiver-Random-Weights"] == "true"
    assert default.json() == alias.json() != other.json()


@pytest.mark.parametrize(
    "method, path, kwargs, status, code, needle",
    [
        ("post", "/fill-mask", {"json": {"inputs": "no mask"}}, 422, "invalid_input", "[MASK]"),
        ("post", "/fill-mask", {"json": {"inputs": 5}}, 422, "invalid_input", "inputs"),
        ("post", "/fill-mask", {"json": {"text": "x[MASK]"}}, 422, "invalid_input", "inputs"),
        (
            "post",
            "/fill-mask",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            422,
            "invalid_input",
            "",
        ),
        (
            "post",
            "/fill-mask",
            {"json": {"inputs": "x[MASK]", "parameters": {"top_k": 0}}},
            422,
            "invalid_input",
            "top_k",
        ),
        (
            "post",
            "/fill-mask",
            {"json": {"inputs": "x[MASK]", "parameters": {"targets": [""]}}},
            422,
            "invalid_input",
            "targets",
        ),
        ("post", "/fill-mask", {"json": {"inputs": []}}, 422, "invalid_input", "inputs"),
        ("post", "/fill-mask", {"json": {"inputs": ["x[MASK]"] * 5}}, 413, "payload_too_large", "at most 4"),
        ("post", "/fill-mask", {"json": {"inputs": "x" * 400 + "[MASK]"}}, 413, "payload_too_large", "256"),
        ("post", "/fill-mask?model=nope", {"json": {"inputs": "x[MASK]"}}, 404, "unknown_model", "nope"),
        ("get", "/fill-mask", {}, 405, "method_not_allowed", ""),
        ("get", "/no-such-route", {}, 404, "not_found", ""),
        ("post", "/classify-image", {"content": b"not an image at all"}, 415, "unsupported_media_type", "image"),
        (
            "post",
            "/classify-image",
            {"content": image_bytes()[:100], "headers": {"Content-Type": "image/png"}},
            422,
            "invalid_input",
            "decoded",
        ),
        (
            "post",
            "/classify-image",
            {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
            "text/plain",
        ),
        ("post", "/classify-image", {"json": {"inputs": "%%%not base64%%%"}}, 422, "invalid_input", "base64"),
        ("post", "/classify-image", {"json": {"image": "abc"}}, 422, "invalid_input", "inputs"),
        ("post", "/classify-image", {"data": {"top_k": "2"}, "files": {}}, 415, "unsupported_media_type", ""),
        (
            "post",
            "/classify-image",
            {"files": {"notes": ("a.txt", b"hello", "text/plain")}},
            415,
            "unsupported_media_type",
            "",
        ),
        ("post", "/classify-image", {"content": b"\0" * 600_000}, 413, "payload_too_large", "bytes"),
        ("post", "/classify-image?model=mlm", {"content": image_bytes()}, 404, "unknown_model", "mlm"),
    ],
)
async def test_bad_requests_get_the_right_status(
    client: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any], status: int, code: str, needle: str
) -> None:
    response = await getattr(client, method)(path, **kwargs)
    assert_error(response, status, code, needle)
    assert (await client.get("/health/ready")).status_code == 200  # and the app is still fine


async def test_offline_model_is_503_naming_the_fix_and_the_server_stays_healthy(client: httpx.AsyncClient) -> None:
    r = await client.post("/fill-mask?model=offline", json={"inputs": "x[MASK]"})
    assert_error(
        r,
        503,
        "model_unavailable",
        "'offline'",
        "perceiver-serve-tests/never-cached-model",
        "perceiver-serve download offline",
        "HF_HUB_OFFLINE",
    )
    assert int(r.headers["Retry-After"]) >= 1
    assert (await client.get("/health/ready")).status_code == 200
    models = {m["name"]: m for m in (await client.get("/v1/models")).json()["models"]}
    assert models["offline"]["status"] == "failed" and "perceiver-serve download" in models["offline"]["reason"]
    assert (await client.post("/fill-mask", json={"inputs": "x[MASK]"})).status_code == 200


async def test_no_text_classifier_configured(make_settings: Callable[..., Settings], checkpoints: dict) -> None:
    models = {"mlm": {"task": "fill-mask", "source": str(checkpoints["mlm"])}}
    async with open_client(build_app(make_settings(models=models))) as client:
        r = await client.post("/classify-text", json={"inputs": "hello"})
        assert_error(r, 404, "no_model_for_task", "no text-classification model is configured", "[models.")


async def test_models_listing(client: httpx.AsyncClient) -> None:
    await client.post("/classify-text", json={"inputs": "hi"})
    models = {m["name"]: m for m in (await client.get("/v1/models")).json()["models"]}
    assert set(models) == {"mlm", "offline", "sentiment", "conv", "conv-b", "flow", "video"}
    sentiment = models["sentiment"]
    assert sentiment["status"] == "ready" and sentiment["task"] == "text-classification"
    assert (sentiment["device"], sentiment["dtype"], sentiment["is_default"]) == ("cpu", "float32", True)
    assert sentiment["reason"] is None and sentiment["random_weights"] is False
    assert models["conv"]["status"] == "unloaded" and models["conv"]["is_default"]
    assert models["conv-b"]["random_weights"] is True and not models["conv-b"]["is_default"]
    assert not models["offline"]["is_default"] and models["mlm"]["is_default"]


async def test_metrics_exposition(client: httpx.AsyncClient) -> None:
    await client.post("/fill-mask", json={"inputs": "x[MASK]"})
    await client.post("/fill-mask", json={"inputs": "no mask"})
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert 'perceiver_requests_total{model="mlm",route="/fill-mask",status="200"} 1.0' in text
    assert 'perceiver_requests_total{model="mlm",route="/fill-mask",status="422"} 1.0' in text
    assert "perceiver_models_loaded 1.0" in text and "perceiver_inflight_requests 0.0" in text
    assert 'perceiver_device_memory_used_bytes{device="cpu",kind="rss"}' in text
    assert 'perceiver_device_memory_capacity_bytes{device="cpu"}' in text


async def test_two_apps_have_separate_metrics(make_settings: Callable[..., Settings]) -> None:
    first, second = build_app(make_settings()), build_app(make_settings())
    assert first.state.metrics.registry is not second.state.metrics.registry


async def test_health_and_draining(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json()["status"] == "ok"
    assert (await client.get("/health/ready")).status_code == 200
    client._transport.app.state.lifecycle.begin_drain()  # type: ignore[attr-defined]
    r = await client.get("/health/ready")
    assert_error(r, 503, "not_ready", "shutting down")
    assert (await client.get("/health/live")).status_code == 200
    refused = await client.post("/fill-mask", json={"inputs": "x[MASK]"})  # new work goes elsewhere
    assert_error(refused, 503, "not_ready", "shutting down")
    assert refused.headers["Retry-After"] == "1" and refused.headers["Connection"] == "close"


async def test_preload_gates_readiness(make_settings: Callable[..., Settings]) -> None:
    app = build_app(make_settings(server={"preload": ["sentiment", "offline"]}))
    async with open_client(app) as client:
        for _ in range(200):
            ready = await client.get("/health/ready")
            if "preloading" not in ready.text:
                break
            await asyncio.sleep(0.05)
        models = {m["name"]: m["status"] for m in (await client.get("/v1/models")).json()["models"]}
        assert models["sentiment"] == "ready" and models["offline"] == "failed"
        assert_error(ready, 503, "not_ready", "offline", "perceiver-serve download offline")  # a failed preload


async def test_openapi_documents_the_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in (
        "/fill-mask",
        "/classify-text",
        "/classify-image",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/v1/models",
    ):
        assert path in spec["paths"]
    image_body = spec["paths"]["/classify-image"]["post"]["requestBody"]["content"]
    assert {"image/*", "multipart/form-data", "application/json"} <= set(image_body)
    assert "429" in spec["paths"]["/fill-mask"]["post"]["responses"]
    assert (await client.get("/docs")).status_code == 200
    json.dumps(spec)


async def test_an_error_in_a_list_names_the_input(client: httpx.AsyncClient) -> None:
    r = await client.post("/fill-mask", json={"inputs": ["a[MASK]", "no mask"]})
    assert_error(r, 422, "invalid_input", "inputs[1]", "[MASK]")


async def test_admin_routes_only_when_enabled(
    client: httpx.AsyncClient, make_settings: Callable[..., Settings]
) -> None:
    assert (await client.post("/v1/models/sentiment/load")).status_code == 404
    async with open_client(build_app(make_settings(server={"admin_api": True}))) as admin:
        r = await admin.post("/v1/models/sentiment/load")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        r = await admin.post("/v1/models/sentiment/unload")
        assert r.status_code == 200 and r.json()["status"] == "unloaded"
        assert_error(await admin.post("/v1/models/nope/load"), 404, "unknown_model", "nope")
        assert_error(await admin.post("/v1/models/offline/load"), 503, "model_unavailable", "offline")


async def test_multipart_over_the_body_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while streaming
        boundary = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        yield boundary
        for _ in range(10):
            yield b"\0" * 100_000
        yield b"\r\n--xyz--\r\n"

    r = await client.post(
        "/classify-image", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert_error(r, 413, "payload_too_large", "bytes")
