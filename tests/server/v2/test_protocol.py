"""What the ecosystem's clients rely on beyond inference itself, in-process: every /v2 answer in the protocol's shape
(middleware, auth and limits included), the standard request parameters, KServe's content types, and Triton's
model configuration, statistics and repository extensions."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from server.app import build_app
from server.settings import Settings
from tests.server.crafted import nested_json
from tests.server.support import assert_error, assert_v2_error, open_client

pytestmark = pytest.mark.anyio


def text(*texts: str, **parameters: Any) -> dict[str, Any]:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}
    return {"inputs": [tensor if not parameters else {**tensor, "parameters": parameters}]}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(build_app(make_settings(server={"max_inputs": 4, "max_body_mb": 0.05}))) as c:
        yield c


async def test_errors_before_a_route_runs_have_the_protocols_shape(client: httpx.AsyncClient) -> None:
    assert_v2_error(await client.get("/v2/no/such/route"), 404)
    assert_v2_error(await client.delete("/v2/models/mlm/infer"), 405)
    big = text("[MASK]" + "x" * 60_000)
    assert_v2_error(await client.post("/v2/models/mlm/infer", json=big), 413, "at most")  # declared length
    headers = {"X-Request-Timeout": "soon"}
    assert_v2_error(await client.post("/v2/models/mlm/infer", json=text("a[MASK]"), headers=headers), 422, "seconds")
    deep = nested_json(100)
    headers = {"Content-Type": "application/json"}
    assert_v2_error(await client.post("/v2/models/mlm/infer", content=deep, headers=headers), 400, "nested")
    assert_v2_error(await client.get(f"/v2/models/{'m' * 300}"), 400, "name")  # path validation: 400 under /v2
    # Elsewhere the app's own shape stays.
    assert_error(await client.get("/no/such/route"), 404, "not_found")
    assert_error(await client.post("/fill-mask", json={"inputs": "[MASK]" + "x" * 60_000}), 413, "payload_too_large")


async def test_draining_refuses_v2_work_in_its_shape(make_settings: Callable[..., Settings]) -> None:
    app = build_app(make_settings())
    async with open_client(app) as client:
        app.state.lifecycle.begin_drain()
        r = await client.post("/v2/models/mlm/infer", json=text("a[MASK]"))
        assert_v2_error(r, 503, "shutting down")
        assert r.headers["Retry-After"] == "1"
        assert_v2_error(await client.get("/v2/health/ready"), 400, "shutting down")  # the protocol's "no"
        assert (await client.get("/health/ready")).status_code == 503


async def test_the_timeout_parameter_is_the_requests_deadline(make_settings: Callable[..., Settings], gate) -> None:
    settings = make_settings(server={"request_timeout_s": 30}, max_delay_ms=0)
    async with open_client(build_app(settings, loader=gate.loader)) as client:
        assert (await client.post("/v2/repository/models/mlm/load")).status_code == 200
        body = {**text("a[MASK]"), "parameters": {"timeout": 300_000, "priority": 2, "sequence_id": 5}}  # 0.3 s
        r = await asyncio.wait_for(client.post("/v2/models/mlm/infer", json=body), 20)
        assert_v2_error(r, 504, "timed out before inference finished")
        gate.open.set()
        body["parameters"] = {"timeout": 1}  # 1 µs: over before the model is reached, whose fault it is not
        assert_v2_error(await client.post("/v2/models/mlm/infer", json=body), 504, "timed out before inference started")
        body["parameters"] = {"timeout": 0, "priority": 2}  # 0: no timeout of its own
        assert (await client.post("/v2/models/mlm/infer", json=body)).status_code == 200


async def test_content_types_of_text_and_images(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v2/models/mlm/infer", json=text("a[MASK]", content_type="str"))).status_code == 200
    r = await client.post("/v2/models/mlm/infer", json=text("a[MASK]", content_type="base64"))
    assert_v2_error(r, 400, "content_type 'base64' does not fit", "'str'")
    encoded = base64.b64encode(png()).decode()
    image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}
    plain = await client.post("/v2/models/conv/infer", json={"inputs": [image]})
    for content_type in ("base64", "pillow_image"):
        typed = {**image, "parameters": {"content_type": content_type}}
        r = await client.post("/v2/models/conv/infer", json={"inputs": [typed]})
        assert r.json()["outputs"] == plain.json()["outputs"]
    r = await client.post("/v2/models/conv/infer", json={"inputs": [{**image, "parameters": {"content_type": "str"}}]})
    assert_v2_error(r, 400, "'base64' or 'pillow_image'")


async def test_model_configuration(client: httpx.AsyncClient) -> None:
    before = (await client.get("/v2/models/c/config")).json()  # an alias: the model's own name
    assert before["name"] == "conv" and before["max_batch_size"] == 4  # max_inputs: rows per request
    assert before["platform"] == "perceiver-io_pytorch" and before["backend"] == "pytorch"
    inputs = {t["name"]: t for t in before["input"]}
    assert inputs["image"] == {
        "name": "image",
        "data_type": "TYPE_STRING",
        "dims": [1],
        "reshape": {"shape": []},
        "optional": True,
    }
    assert inputs["pixel_values"]["dims"] == [3, -1, -1] and inputs["pixel_values"]["data_type"] == "TYPE_FP32"
    assert before["dynamic_batching"]["preferred_batch_size"] == [8]
    assert before["dynamic_batching"]["max_queue_delay_microseconds"] == 20_000
    assert before["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 64
    assert before["instance_group"][0]["kind"] == "KIND_CPU"
    await client.post("/v2/repository/models/conv/load")
    after = (await client.get("/v2/models/conv/versions/1/config")).json()
    assert {t["name"]: t["dims"] for t in after["output"]} == {"logits": [4], "labels": [-1]}
    flow = (await client.get("/v2/models/flow/config")).json()
    assert all("optional" not in t for t in flow["input"])  # both frames, always
    assert_v2_error(await client.get("/v2/models/conv/versions/2/config"), 404, "only version")


async def test_the_configured_default_timeout_is_the_models_own(
    make_settings: Callable[..., Settings], checkpoints
) -> None:
    models = {
        "mlm": {"task": "fill-mask", "source": str(checkpoints["mlm"])},
        "flow": {"task": "optical-flow", "source": str(checkpoints["flow"]), "request_timeout_s": {"cpu": 45}},
    }
    async with open_client(build_app(make_settings(server={"request_timeout_s": 30}, models=models))) as client:
        for name, seconds in (("mlm", 30), ("flow", 45)):
            config = (await client.get(f"/v2/models/{name}/config")).json()
            assert config["dynamic_batching"]["default_queue_policy"]["default_timeout_microseconds"] == seconds * 10**6


async def test_statistics_are_the_metrics_numbers(client: httpx.AsyncClient, read_metric) -> None:
    for texts in (["a[MASK]"], ["b[MASK]", "cc[MASK]"]):
        assert (await client.post("/v2/models/mlm/infer", json=text(*texts))).status_code == 200
    assert (await client.post("/fill-mask", json={"inputs": "d[MASK]"})).status_code == 200
    assert (await client.post("/v2/models/mlm/infer", json=text("no mask"))).status_code == 422
    (stats,) = (await client.get("/v2/models/mlm/stats")).json()["model_stats"]
    metrics = (await client.get("/metrics")).text
    infer = stats["inference_stats"]
    assert (stats["name"], stats["version"]) == ("mlm", "1")
    assert infer["success"]["count"] == 3 and infer["fail"]["count"] == 1 and infer["success"]["ns"] > 0
    assert stats["inference_count"] == 4 == read_metric(metrics, "perceiver_batch_size_sum", model="mlm")
    assert stats["execution_count"] == read_metric(metrics, "perceiver_batch_size_count", model="mlm")
    assert infer["queue"]["count"] == read_metric(metrics, "perceiver_queue_wait_seconds_count", model="mlm")
    seconds = read_metric(metrics, "perceiver_inference_duration_seconds_sum", model="mlm")
    assert infer["compute_infer"]["ns"] == round(seconds * 1e9)
    last = read_metric(metrics, "perceiver_last_inference_timestamp_seconds", model="mlm")
    assert stats["last_inference"] == round(last * 1000) > 0
    every = (await client.get("/v2/models/stats")).json()["model_stats"]
    assert {s["name"] for s in every} == {"mlm", "offline", "sentiment", "conv", "conv-b", "flow", "video"}
    assert next(s for s in every if s["name"] == "conv")["inference_count"] == 0
    assert_v2_error(await client.get("/v2/models/nope/stats"), 404, "no model named")


async def test_repository_index_load_and_unload(make_settings: Callable[..., Settings]) -> None:
    for admin in (False, True):
        async with open_client(build_app(make_settings(server={"admin_api": admin}))) as client:
            index = (await client.post("/v2/repository/index")).json()  # no body, as tritonclient sends it
            assert {m["name"]: m["state"] for m in index}["mlm"] == "UNAVAILABLE"
            assert all(m["version"] == "1" and m["reason"] for m in index)
            assert (await client.post("/v2/repository/index", json={"ready": True})).json() == []
            assert (await client.get("/v2/models/mlm/ready")).status_code == 400
            assert (await client.post("/v2/repository/models/mlm/load", json={})).json() == {}
            assert (await client.get("/v2/models/mlm/ready")).json() == {"name": "mlm", "ready": True}
            ready = (await client.post("/v2/repository/index", json={"ready": True})).json()
            assert ready == [{"name": "mlm", "version": "1", "state": "READY", "reason": ""}]
            body = {"parameters": {"config": '{"max_batch_size": 1}'}}
            r = await client.post("/v2/repository/models/mlm/load", json=body)
            assert_v2_error(r, 400, "cannot bring a configuration")
            assert_v2_error(await client.post("/v2/repository/models/nope/load"), 404, "no model named")
            unload = await client.post(
                "/v2/repository/models/mlm/unload", json={"parameters": {"unload_dependents": 0}}
            )
            if not admin:
                assert_v2_error(unload, 403, "admin_api = true")
                continue
            assert unload.json() == {}
            assert (await client.get("/v2/models/mlm/ready")).status_code == 400
            assert (await client.post("/v2/models/mlm/infer", json=text("a[MASK]"))).status_code == 200  # reloads
