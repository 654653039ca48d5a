"""POST /optical-flow in-process with the small flow checkpoint (48x64 tiles), against a numpy
re-implementation of the DeepMind colab's tiling loop and direct model calls."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from model_core import load_pretrained
from model_core.flow_processing import frame_pair_inputs
from server.app import build_app
from server.media.flow import read_flo
from server.settings import Settings
from tests.server.support import open_client

pytestmark = pytest.mark.anyio
TILE = (48, 64)


def frames(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame and the same frame shifted 2 px right and 1 px down."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 256, (height + 1, width + 2, 3), dtype=np.uint8)
    return first[1:, 2:].copy(), first[:-1, :-2].copy()


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def upload(first: np.ndarray, second: np.ndarray) -> dict:
    return {
        "files": {"frame1": ("a.png", encode(first), "image/png"), "frame2": ("b.png", encode(second), "image/png")}
    }


def as_json(first: np.ndarray, second: np.ndarray) -> dict:
    return {
        "json": {
            "frame1": base64.b64encode(encode(first)).decode(),
            "frame2": base64.b64encode(encode(second)).decode(),
        }
    }


def npy(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npy"
    return np.load(io.BytesIO(response.content), allow_pickle=False)


@pytest.fixture(scope="module")
def model(checkpoints: dict[str, Path]) -> torch.nn.Module:
    return load_pretrained(str(checkpoints["flow"]), device="cpu", dtype=torch.float32)


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(build_app(make_settings())) as c:
        yield c


def direct(model: torch.nn.Module, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One model call on a tile-sized pair, in pixels."""
    with torch.inference_mode():
        return (model(frame_pair_inputs(first, second)).logits[0] * 20).numpy()


def colab_flow(model: torch.nn.Module, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The DeepMind colab's compute_grid_indices + compute_optical_flow, in numpy (sizes where its grid fits)."""
    height, width = first.shape[:2]
    ys = list(range(0, height, TILE[0] - 20))
    xs = list(range(0, width, TILE[1] - 20))
    ys[-1], xs[-1] = height - TILE[0], width - TILE[1]
    flows, counts = np.zeros((height, width, 2)), np.zeros((height, width, 1))
    for y, x in itertools.product(ys, xs):
        piece = (slice(y, y + TILE[0]), slice(x, x + TILE[1]))
        flow = direct(model, first[piece], second[piece])
        weights_x, weights_y = np.meshgrid(np.arange(TILE[1]), np.arange(TILE[0]))
        weights_x = np.minimum(weights_x + 1, TILE[1] - weights_x)
        weights_y = np.minimum(weights_y + 1, TILE[0] - weights_y)
        weights = np.minimum(weights_x, weights_y)[:, :, None]
        padding = [(y, height - y - TILE[0]), (x, width - x - TILE[1]), (0, 0)]
        flows += np.pad(flow * weights, padding)
        counts += np.pad(weights, padding)
    return (flows / counts).astype(np.float32)


async def test_large_frame_matches_the_colab_loop(client: httpx.AsyncClient, model: torch.nn.Module) -> None:
    first, second = frames(80, 110)  # 3 x 3 tiles: y 0, 28, 32; x 0, 44, 46
    response = await client.post("/optical-flow", **upload(first, second))
    flow = npy(response)
    assert flow.shape == (80, 110, 2) and flow.dtype == np.float32
    expected = colab_flow(model, first, second)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(flow, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert response.headers["x-model"] == "flow" and int(response.headers["x-batch-size"]) > 1
    # Timing headers of a multi-item request: 9 tiles; the longest pass, and every pass added up.
    assert response.headers["x-items"] == "9"
    assert float(response.headers["x-inference-total-ms"]) >= float(response.headers["x-inference-time-ms"]) > 0


async def test_frame_of_one_tile_is_one_model_call(client: httpx.AsyncClient, model: torch.nn.Module) -> None:
    first, second = frames(*TILE, seed=1)
    flow = npy(await client.post("/optical-flow", **upload(first, second)))
    np.testing.assert_allclose(flow, direct(model, first, second), rtol=1e-5, atol=1e-9)
    assert not np.array_equal(flow[..., 0], flow[..., 1])


async def test_small_frames_are_upscaled_and_the_flow_scaled_back(
    client: httpx.AsyncClient, model: torch.nn.Module
) -> None:
    first, second = frames(24, 32, seed=2)  # x2 on both axes covers exactly one 48x64 tile
    flow = npy(await client.post("/optical-flow", **upload(first, second)))
    big = [np.asarray(Image.fromarray(f).resize((64, 48), Image.Resampling.BILINEAR)) for f in (first, second)]
    at_tile = direct(model, *big)  # (48, 64, 2) in pixels of the upscaled frames
    expected = (
        np.stack(
            [
                np.asarray(Image.fromarray(at_tile[..., c]).resize((32, 24), Image.Resampling.BILINEAR))
                for c in range(2)
            ],
            axis=-1,
        )
        / 2
    )
    assert flow.shape == (24, 32, 2)
    np.testing.assert_allclose(flow, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    odd = npy(await client.post("/optical-flow", **upload(*frames(21, 40, seed=3))))
    assert odd.shape == (21, 40, 2) and np.isfinite(odd).all()


async def test_multipart_json_and_data_urls_agree(client: httpx.AsyncClient) -> None:
    first, second = frames(50, 70, seed=4)
    by_upload = npy(await client.post("/optical-flow", **upload(first, second)))
    by_json = npy(await client.post("/optical-flow", **as_json(first, second)))
    payload = as_json(first, second)["json"]
    data_urls = {k: f"data:image/png;base64,{v}" for k, v in payload.items()}
    by_data_url = npy(await client.post("/optical-flow", json=data_urls))
    jpeg = npy(
        await client.post(
            "/optical-flow",
            files={"frame1": ("a.jpg", encode(first, "JPEG")), "frame2": ("b.webp", encode(second, "WEBP"))},
        )
    )
    assert np.array_equal(by_upload, by_json) and np.array_equal(by_upload, by_data_url)
    assert jpeg.shape == by_upload.shape


async def test_every_output_format(client: httpx.AsyncClient) -> None:
    pair = frames(50, 70, seed=5)
    flow = npy(await client.post("/optical-flow?format=npy", **upload(*pair)))

    flo = await client.post("/optical-flow?format=flo", **upload(*pair))
    assert flo.headers["content-type"] == "application/x-flo" and flo.content[:4] == b"PIEH"
    assert np.array_equal(read_flo(flo.content), flow)

    as_json_ = await client.post("/optical-flow?format=json", **upload(*pair))
    assert as_json_.headers["content-type"] == "application/json"
    body = json.loads(as_json_.content)
    assert body["shape"] == [50, 70, 2] and body["dtype"] == "float32"
    assert np.array_equal(np.frombuffer(base64.b64decode(body["data"]), "<f4").reshape(50, 70, 2), flow)

    png = await client.post("/optical-flow?format=png", **upload(*pair))
    assert png.headers["content-type"] == "image/png" and png.headers["x-model"] == "flow"
    image = Image.open(io.BytesIO(png.content))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (70, 50)


@pytest.mark.parametrize(
    "accept, query, media_type",
    [
        ("image/png", "", "image/png"),
        ("application/json", "", "application/json"),
        ("application/x-flo", "", "application/x-flo"),
        ("text/html, */*;q=0.8", "", "application/x-npy"),
        ("image/png", "?format=flo", "application/x-flo"),
    ],
)
async def test_accept_header_picks_the_format(
    client: httpx.AsyncClient, accept: str, query: str, media_type: str
) -> None:
    response = await client.post(f"/optical-flow{query}", headers={"Accept": accept}, **upload(*frames(48, 64)))
    assert response.status_code == 200 and response.headers["content-type"] == media_type


async def test_answer_is_the_same_alone_and_batched_with_other_requests(make_settings: Callable[..., Settings]) -> None:
    pairs = [frames(60 + 10 * i, 70 + 20 * i, seed=10 + i) for i in range(4)]  # the first is cut in 2 x 2 tiles
    async with open_client(build_app(make_settings(max_delay_ms=200))) as client:
        alone = await client.post("/optical-flow", **upload(*pairs[0]))
        responses = await asyncio.gather(*(client.post("/optical-flow", **upload(*p)) for p in pairs))
    together = [npy(r) for r in responses]
    assert alone.headers["x-batch-size"] == "4"
    assert int(responses[0].headers["x-batch-size"]) > 4  # its tiles shared a batch with another request's
    assert np.array_equal(together[0], npy(alone))
    assert [t.shape[:2] for t in together] == [p[0].shape[:2] for p in pairs]


@pytest.mark.parametrize(
    "request_kwargs, status, code, words",
    [
        (
            {"files": {"frame1": ("a.png", encode(frames(40, 60)[0])), "frame2": ("b.png", encode(frames(41, 60)[1]))}},
            422,
            "invalid_input",
            "same size",
        ),
        (
            {"files": {"frame1": ("a.png", encode(frames(40, 60)[0])), "frame2": ("b.png", b"not an image")}},
            415,
            "unsupported_media_type",
            "frame2",
        ),
        (
            {
                "files": {
                    "frame1": ("a.png", encode(frames(40, 60)[0])[:80]),
                    "frame2": ("b.png", encode(frames(40, 60)[1])),
                }
            },
            422,
            "invalid_input",
            "frame1",
        ),
        ({"files": {"frame1": ("a.png", encode(frames(40, 60)[0]))}}, 422, "invalid_input", "frame2"),
        ({"json": {"frame1": "%%%", "frame2": "AAAA"}}, 422, "invalid_input", "frame1 is not valid base64"),
        ({"json": {"frame1": "AAAA"}}, 422, "invalid_input", "frame2"),
        ({"json": {"frame1": "AAAA", "frame2": "AAAA", "fps": 30}}, 422, "invalid_input", "fps"),
        (
            {"content": encode(frames(40, 60)[0]), "headers": {"Content-Type": "image/png"}},
            415,
            "unsupported_media_type",
            "frame1",
        ),
        (
            {
                "files": {
                    "frame1": ("a.png", encode(np.zeros((2, 4100, 3), np.uint8))),
                    "frame2": ("b.png", encode(np.zeros((2, 4100, 3), np.uint8))),
                }
            },
            413,
            "payload_too_large",
            "4096",
        ),
        (
            {
                "files": {
                    "frame1": ("a.png", encode(np.zeros((10, 1000, 3), np.uint8))),
                    "frame2": ("b.png", encode(np.zeros((10, 1000, 3), np.uint8))),
                }
            },
            413,
            "payload_too_large",
            "elongated",
        ),
    ],
)
async def test_bad_requests_are_4xx_with_a_clear_message(
    client: httpx.AsyncClient, request_kwargs: dict, status: int, code: str, words: str
) -> None:
    response = await client.post("/optical-flow", **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"]


async def test_unknown_format_and_model(client: httpx.AsyncClient) -> None:
    pair = upload(*frames(48, 64))
    assert (await client.post("/optical-flow?format=tiff", **pair)).status_code == 422
    unknown = await client.post("/optical-flow?model=conv", **pair)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_model"


async def test_openapi_describes_the_route(client: httpx.AsyncClient) -> None:
    route = (await client.get("/openapi.json")).json()["paths"]["/optical-flow"]["post"]
    assert set(route["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert set(route["responses"]["200"]["content"]) == {
        "application/x-npy",
        "application/x-flo",
        "image/png",
        "application/json",
    }
    assert {"413", "415", "422"} <= set(route["responses"])
