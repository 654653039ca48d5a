"""The /v2 routes in-process: metadata, readiness, inference on every task, and its errors. Answers are checked
against the task routes, which run the same runners through the same batchers."""

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

from model_core.image_processing import preprocess_images
from server.app import build_app
from server.settings import Settings
from tests.server.support import assert_v2_error, open_client

pytestmark = pytest.mark.anyio


def png(seed: int = 0, size: tuple[int, int] = (80, 60)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(build_app(make_settings(server={"max_inputs": 4}))) as c:
        yield c


async def test_server_metadata_and_health(client: httpx.AsyncClient) -> None:
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "perceiver-serve"
    implemented = "binary_tensor_data classification model_configuration model_repository parameters statistics"
    assert meta["extensions"] == implemented.split()  # exactly these: no sequence, shared memory, trace, logging
    assert (await client.get("/v2/health/live")).json() == {"live": True}  # what the KServe SDK reads
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}


async def test_model_metadata_and_readiness(client: httpx.AsyncClient) -> None:
    before = (await client.get("/v2/models/c")).json()  # an alias answers with the model's name
    assert before["name"] == "conv" and before["versions"] == ["1"]
    assert before["parameters"] == {"task": "image-classification", "status": "unloaded"}
    assert {t["name"]: t["shape"] for t in before["inputs"]} == {"image": [-1], "pixel_values": [-1, 3, -1, -1]}
    assert_v2_error(await client.get("/v2/models/conv/ready"), 400, "unloaded", "first inference request")

    r = await client.post("/v2/models/conv/infer", json={"inputs": [tensor("image", "BYTES", [1], [b64(png())])]})
    assert r.status_code == 200, r.text
    assert (await client.get("/v2/models/conv/ready")).json() == {"name": "conv", "ready": True}
    assert (await client.get("/v2/models/conv/versions/1/ready")).status_code == 200
    after = (await client.get("/v2/models/conv/versions/1")).json()
    assert {t["name"]: (t["datatype"], t["shape"]) for t in after["inputs"] + after["outputs"]} == {
        "image": ("BYTES", [-1]),
        "pixel_values": ("FP32", [-1, 3, 224, 224]),
        "logits": ("FP32", [-1, 4]),
        "labels": ("BYTES", [-1, -1]),
    }

    assert_v2_error(await client.get("/v2/models/nope"), 404, "no model named 'nope'", "conv")
    assert_v2_error(await client.get("/v2/models/conv/versions/2"), 404, "only version is '1'")
    assert_v2_error(await client.post("/v2/models/nope/infer", json={}), 404, "no model named")


async def test_text_classification_matches_the_task_route(client: httpx.AsyncClient) -> None:
    texts = ["I loved it", "a slightly longer sentence"]
    route = (await client.post("/classify-text", json={"inputs": texts})).json()
    r = await client.post(
        "/v2/models/sentiment/infer",
        json={
            "id": "abc",
            "inputs": [tensor("text", "BYTES", [2, 1], [[t] for t in texts])],
            "outputs": [{"name": "labels"}, {"name": "logits"}],
        },
    )
    assert r.json()["id"] == "abc" and r.json()["model_name"] == "sentiment" and r.headers["X-Model"] == "sentiment"
    got = outputs(r)
    assert got["logits"].shape == (2, 3) and got["labels"].shape == (2, 3)
    for labels, expected in zip(got["labels"], route, strict=True):
        parsed = [(s.split(":", 2)[2], float(s.split(":", 2)[0])) for s in labels]
        assert [p[0] for p in parsed] == [x["label"] for x in expected]
        assert np.allclose([p[1] for p in parsed], [x["score"] for x in expected], rtol=1e-6)

    ids = [[4, *(b + 6 for b in t.encode()), 5] for t in texts]  # [CLS] bytes [SEP]
    width = max(map(len, ids))
    padded = [row + [0] * (width - len(row)) for row in ids]
    mask = [[1] * len(row) + [0] * (width - len(row)) for row in ids]
    by_ids = outputs(
        await client.post(
            "/v2/models/sentiment/infer",
            json={
                "inputs": [
                    tensor("input_ids", "INT64", [2, width], padded),
                    tensor("attention_mask", "INT64", [2, width], mask),
                ],
                "outputs": [{"name": "logits"}],
            },
        )
    )
    assert np.array_equal(by_ids["logits"], got["logits"])

    top = outputs(
        await client.post(
            "/v2/models/sentiment/infer",
            json={
                "inputs": [tensor("text", "BYTES", [1], [texts[0]])],
                "parameters": {"top_k": 1, "function_to_apply": "none"},
                "outputs": [{"name": "labels"}, {"name": "logits", "parameters": {"classification": 2}}],
            },
        )
    )
    best = int(np.argmax(got["logits"][0]))
    assert top["labels"].shape == (1, 1) and top["labels"][0, 0].split(":")[1] == str(best)
    value, index, label = top["logits"][0, 0].split(":")  # Triton's "value:index:label", on the raw logits
    assert int(index) == best and label == route[0][0]["label"]
    assert np.isclose(float(value), got["logits"][0, best], rtol=1e-6)


async def test_fill_mask_matches_the_task_route(client: httpx.AsyncClient) -> None:
    texts = ["Hello [MASK]orld", "a[MASK][MASK]b"]
    route = (await client.post("/fill-mask", json={"inputs": texts, "parameters": {"top_k": 3}})).json()
    got = outputs(
        await client.post(
            "/v2/models/mlm/infer", json={"inputs": [tensor("text", "BYTES", [2], texts)], "parameters": {"top_k": 3}}
        )
    )
    assert got["mask_positions"].tolist() == [[7, -1], [2, 3]]  # -1: padding (the first text has one mask)
    assert got["logits"].shape == (2, 2, 262) and got["token_ids"].shape == (2, 2, 3)
    per_mask = [[route[0]], route[1]]  # one [MASK] -> a list of candidates; several -> a list per mask
    for n, masks in enumerate(per_mask):
        for p, candidates in enumerate(masks):
            assert got["token_ids"][n, p].tolist() == [c["token"] for c in candidates]
            assert got["tokens"][n, p].tolist() == [c["token_str"] for c in candidates]
            assert np.allclose(got["scores"][n, p], [c["score"] for c in candidates], rtol=1e-6)
    assert got["token_ids"][0, 1].tolist() == [-1] * 3 and got["tokens"][0, 1].tolist() == [""] * 3

    ids = [4, *(b + 6 for b in b"Hello "), 3, *(b + 6 for b in b"orld"), 5]
    by_ids = outputs(
        await client.post(
            "/v2/models/mlm/infer",
            json={"inputs": [tensor("input_ids", "INT64", [1, len(ids)], ids)], "outputs": [{"name": "logits"}]},
        )
    )
    assert np.allclose(by_ids["logits"][0, 0], got["logits"][0, 0], rtol=1e-4, atol=1e-8)  # a batch of one


async def test_image_classification_by_file_and_by_pixels(client: httpx.AsyncClient) -> None:
    data = png()
    route = (await client.post("/classify-image", content=data)).json()
    by_file = outputs(
        await client.post("/v2/models/conv/infer", json={"inputs": [tensor("image", "BYTES", [1, 1], [[b64(data)]])]})
    )
    pixels = preprocess_images([Image.open(io.BytesIO(data))])  # (1, 3, 224, 224)
    by_pixels = outputs(
        await client.post(
            "/v2/models/conv/infer",
            json={
                "inputs": [tensor("pixel_values", "FP32", [1, 3, 224, 224], pixels.reshape(-1).tolist())],
                "outputs": [{"name": "logits"}],
            },
        )
    )
    assert np.array_equal(by_pixels["logits"], by_file["logits"])
    assert [s.split(":", 2)[2] for s in by_file["labels"][0]] == [x["label"] for x in route]

    for datatype, dtype in (("FP16", np.float16), ("BF16", None)):
        r = await client.post(
            "/v2/models/conv/infer",
            json={
                "inputs": [tensor("image", "BYTES", [1], [b64(data)])],
                "parameters": {"output_datatype": datatype},
                "outputs": [{"name": "logits"}],
            },
        )
        [logits] = r.json()["outputs"]
        assert logits["datatype"] == datatype
        expected = by_file["logits"].astype(dtype) if dtype else _bf16(by_file["logits"])
        assert np.array_equal(np.array(logits["data"], dtype=np.float32), expected.reshape(-1).astype(np.float32))


def _bf16(values: np.ndarray) -> np.ndarray:
    import torch

    return torch.from_numpy(values.astype(np.float32)).to(torch.bfloat16).float().numpy()


async def test_optical_flow_matches_the_task_route(client: httpx.AsyncClient) -> None:
    first, second = png(1, (64, 48)), png(2, (64, 48))
    route = np.load(
        io.BytesIO(
            (
                await client.post(
                    "/optical-flow?format=npy", files={"frame1": ("a.png", first), "frame2": ("b.png", second)}
                )
            ).content
        )
    )
    got = outputs(
        await client.post(
            "/v2/models/flow/infer",
            json={
                "inputs": [
                    tensor("frame1", "BYTES", [2], [b64(first), b64(first)]),
                    tensor("frame2", "BYTES", [2], [b64(second), b64(second)]),
                ]
            },
        )
    )
    assert got["flow"].shape == (2, 48, 64, 2)
    for flow in got["flow"]:  # two pairs in one batch vs one alone: equal up to float summation order
        assert np.allclose(flow, route, rtol=1e-4, atol=1e-6)
    r = await client.post(
        "/v2/models/flow/infer",
        json={
            "inputs": [
                tensor("frame1", "BYTES", [2], [b64(first), b64(png(3, (80, 60)))]),
                tensor("frame2", "BYTES", [2], [b64(second), b64(png(4, (80, 60)))]),
            ]
        },
    )
    assert_v2_error(r, 422, "different sizes")


@pytest.mark.parametrize(
    "model, body, status, needles",
    [
        ("mlm", {"inputs": [tensor("texts", "BYTES", [1], ["a"])]}, 400, ["'texts'", "it takes text (BYTES"]),
        ("mlm", {"inputs": [tensor("text", "FP32", [1], [1.0])]}, 400, ["must be BYTES"]),
        ("mlm", {"inputs": [tensor("text", "BYTES", [1, 2], ["a", "b"])]}, 400, ["[N] or [N, 1]"]),
        ("mlm", {"inputs": [tensor("text", "BYTES", [1], ["no mask"])]}, 422, ["text[0]: input has no [MASK]"]),
        ("mlm", {"inputs": [tensor("text", "BYTES", [5], ["[MASK]"] * 5)]}, 413, ["5 inputs"]),
        (
            "mlm",
            {
                "inputs": [
                    tensor("input_ids", "INT64", [1, 3], [4, 3, 5]),
                    tensor("attention_mask", "INT64", [1, 3], [0, 1, 1]),
                ]
            },
            400,
            ["right padding"],
        ),
        ("mlm", {"inputs": [tensor("input_ids", "INT64", [1, 3], [4, 300, 5])]}, 422, ["input_ids[0]", "vocabulary"]),
        (
            "mlm",
            {"inputs": [tensor("text", "BYTES", [1], ["[MASK]"])], "outputs": [{"name": "labels"}]},
            400,
            ["unknown output 'labels'", "mask_positions"],
        ),
        (
            "sentiment",
            {
                "inputs": [tensor("text", "BYTES", [1], ["x"])],
                "outputs": [{"name": "labels", "parameters": {"classification": 2}}],
            },
            400,
            ["applies to logits"],
        ),
        ("conv", {"inputs": [tensor("image", "BYTES", [1], ["not base64!"])]}, 422, ["image[0]", "base64"]),
        ("conv", {"inputs": [tensor("image", "BYTES", [1], [b64(b"not an image")])]}, 415, ["image[0]"]),
        ("conv", {"inputs": [tensor("pixel_values", "FP32", [1, 3, 2, 2], [0.0] * 12)]}, 422, ["[3, 224, 224]"]),
        ("video", {"inputs": [tensor("video", "FP32", [1], [0.0])]}, 400, ["POST /autoencode-video"]),
    ],
)
async def test_bad_requests_say_what_is_wrong(
    client: httpx.AsyncClient, model: str, body: dict[str, Any], status: int, needles: list[str]
) -> None:
    assert_v2_error(await client.post(f"/v2/models/{model}/infer", json=body), status, *needles)


async def test_body_limits_apply(make_settings: Callable[..., Settings]) -> None:
    async with open_client(build_app(make_settings(server={"max_body_mb": 0.01}))) as client:
        big = {"inputs": [tensor("text", "BYTES", [1], ["[MASK]" + "x" * 20_000])]}
        assert (await client.post("/v2/models/mlm/infer", json=big)).status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit trips while reading
            for _ in range(20):
                yield b" " * 1024

        assert_v2_error(await client.post("/v2/models/mlm/infer", content=chunks()), 413, "exceeds")


async def test_the_server_image_limits_apply(make_settings: Callable[..., Settings]) -> None:
    async with open_client(build_app(make_settings(server={"max_image_pixels": 1000}))) as client:
        r = await client.post("/v2/models/conv/infer", json={"inputs": [tensor("image", "BYTES", [1], [b64(png())])]})
        assert_v2_error(r, 413, "image[0]", "at most 1000 pixels")
        frames = [tensor(name, "BYTES", [1], [b64(png())]) for name in ("frame1", "frame2")]
        assert_v2_error(await client.post("/v2/models/flow/infer", json={"inputs": frames}), 413, "frame1[0]")


async def test_one_request_path_shared_batches_and_metrics(
    make_settings: Callable[..., Settings], gate, read_metric
) -> None:
    """A v2 request and a task-route request queue on one batcher and run in one batch."""
    app = build_app(make_settings(max_delay_ms=0), loader=gate.loader)
    async with open_client(app) as client:
        first = asyncio.create_task(client.post("/classify-text", json={"inputs": "warm"}))
        assert await asyncio.to_thread(gate.entered.wait, 10)  # that batch holds the model
        v2 = asyncio.create_task(
            client.post("/v2/models/sentiment/infer", json={"inputs": [tensor("text", "BYTES", [1], ["hello"])]})
        )
        task = asyncio.create_task(client.post("/classify-text", json={"inputs": "hello"}))
        batcher = app.state.registry.entries["sentiment"].batcher
        for _ in range(200):
            if batcher.depth == 2:
                break
            await asyncio.sleep(0.01)
        gate.open.set()
        results = [await t for t in (first, v2, task)]
        assert [r.status_code for r in results] == [200, 200, 200]
        assert results[1].headers["X-Batch-Size"] == results[2].headers["X-Batch-Size"] == "2"
        metrics = (await client.get("/metrics")).text
        assert (
            read_metric(
                metrics, "perceiver_requests_total", route="/v2/models/{name}/infer", model="sentiment", status="200"
            )
            == 1
        )


async def test_a_bfloat16_model_answers_its_logits_exactly(make_settings: Callable[..., Settings]) -> None:
    async with open_client(build_app(make_settings(server={"dtype": "bfloat16"}))) as client:
        body = {"inputs": [tensor("image", "BYTES", [1], [b64(png())])], "outputs": [{"name": "logits"}]}
        fp32 = outputs(await client.post("/v2/models/conv/infer", json=body))["logits"]
        body["parameters"] = {"output_datatype": "BF16"}
        bf16 = outputs(await client.post("/v2/models/conv/infer", json=body))["logits"]
    assert np.array_equal(_bf16(fp32), fp32)  # FP32 is the bfloat16 values, widened
    assert np.array_equal(bf16, fp32)
