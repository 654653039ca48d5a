"""Admission before parsing: every cap is a setting, and each refuses its input before the costly step it guards."""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import ImageFile

from server.app import build_app
from server.http.admission import nesting_exceeds, request_timeout
from server.settings import Settings, SettingsError, load_settings
from tests.server.crafted import image_file, nested_json, npy_file, png_claiming
from tests.server.support import assert_error, open_client

pytestmark = pytest.mark.anyio
MASKED = {"inputs": "Hello [MASK]orld"}


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def random_json(rng: random.Random, levels: int) -> Any:
    """Nested lists and objects whose strings and keys are full of brackets, quotes and backslashes."""
    tricky = ['a"[', "\\", "}]", '\\"', "[[{{", '"', "\\\\]"]
    if levels == 0 or rng.random() < 0.25:
        return rng.choice([*tricky, 1, None, 2.5])
    if rng.random() < 0.5:
        return [random_json(rng, levels - 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(tricky) + str(i): random_json(rng, levels - 1) for i in range(rng.randint(0, 3))}


def test_nesting_scan_agrees_with_a_parser() -> None:
    rng = random.Random(7)
    for _ in range(500):
        value = random_json(rng, 8)
        text, depth = json.dumps(value).encode(), depth_of(value)
        for limit in range(10):
            assert nesting_exceeds(text, limit) == (depth > limit), (text, limit, depth)


def test_nesting_scan_needs_no_recursion() -> None:
    deep = b"[" * 2_000_000 + b"]" * 2_000_000  # json.loads raises RecursionError on this
    assert nesting_exceeds(deep, 32)
    assert not nesting_exceeds(json.dumps({"inputs": "[" * 1_000_000}).encode(), 2)  # brackets in a string


@pytest.mark.parametrize("value, seconds", [(b"2.5", 2.5), (b" 7 ", 7.0), (b"1000", 60.0)])
def test_request_timeout_header_is_capped(value: bytes, seconds: float) -> None:
    assert request_timeout(value, cap_s=60) == seconds


def test_a_timeout_cap_below_the_default_timeout_is_refused_at_start_up() -> None:
    with pytest.raises(SettingsError, match="max_request_timeout_s"):
        load_settings(environ={"PERCEIVER_SERVE_REQUEST_TIMEOUT_S": "30", "PERCEIVER_SERVE_MAX_REQUEST_TIMEOUT_S": "5"})
    # By default a client may ask for more than the default deadline, up to 600 s.
    assert load_settings(environ={}).server.request_timeout_cap_s == 600
    assert load_settings(environ={"PERCEIVER_SERVE_REQUEST_TIMEOUT_S": "900"}).server.request_timeout_cap_s == 900


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    server = {
        "max_body_mb": 1,
        "max_inputs": 4,
        "max_text_bytes": 100,
        "max_image_pixels": 10_000,
        "max_json_depth": 8,
        "max_video_frames": 3,
        "max_audio_seconds": 1,
    }
    async with open_client(build_app(make_settings(server=server))) as c:
        yield c


async def stream(*parts: bytes) -> AsyncIterator[bytes]:
    """A body without Content-Length (chunked): the limit must apply while it streams in."""
    for part in parts:
        yield part


PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'


@pytest.mark.parametrize(
    "path, content_type, head, tail",
    [
        ("/fill-mask", "application/json", b'{"inputs": "', b'"}'),  # read by the admission middleware
        ("/classify-image", "image/png", b"", b""),  # read by the route
        ("/classify-image", "multipart/form-data; boundary=b", PART, b"\r\n--b--\r\n"),  # by the form parser
    ],
)
async def test_streamed_body_over_the_limit_is_413(
    client: httpx.AsyncClient, path: str, content_type: str, head: bytes, tail: bytes
) -> None:
    chunks = stream(head, *[b"x" * 300_000] * 4, tail)
    r = await client.post(path, content=chunks, headers={"Content-Type": content_type})
    assert_error(r, 413, "payload_too_large", "bytes")


async def test_declared_body_over_the_limit_is_413_unread(client: httpx.AsyncClient) -> None:
    read = []

    async def body() -> AsyncIterator[bytes]:
        read.append(True)
        yield b"{}"

    r = await client.post(
        "/fill-mask", content=body(), headers={"Content-Length": str(2 * 2**20), "Content-Type": "application/json"}
    )
    assert_error(r, 413, "payload_too_large", str(2 * 2**20))
    assert read == []


@pytest.fixture
def no_tokenizing(monkeypatch: pytest.MonkeyPatch) -> None:
    from model_core.tokenizer import ByteTokenizer

    monkeypatch.setattr(ByteTokenizer, "encode", lambda *a, **k: pytest.fail("tokenized"))


@pytest.mark.parametrize("route", ["/fill-mask", "/classify-text"])
@pytest.mark.parametrize(
    "inputs, needle",
    [
        ("x" * 95 + "[MASK]", "over 100 bytes"),
        ("é" * 48 + "[MASK]", "over 100 bytes"),  # 54 characters, 102 bytes: counted in UTF-8
        (["a[MASK]", "y" * 200], "inputs[1]"),
    ],
)
async def test_text_over_max_text_bytes_is_413_before_tokenizing(
    client: httpx.AsyncClient, no_tokenizing: None, route: str, inputs: Any, needle: str
) -> None:
    assert_error(await client.post(route, json={"inputs": inputs}), 413, "payload_too_large", needle)


async def test_megabytes_of_masks_are_refused_before_tokenizing(
    make_settings: Callable[..., Settings], no_tokenizing: None
) -> None:
    async with open_client(build_app(make_settings())) as client:  # default caps: 32 MB bodies, 64 KiB texts
        r = await client.post("/fill-mask", json={"inputs": "[MASK]" * 2_000_000})
    assert_error(r, 413, "payload_too_large", "over 65536 bytes")


async def test_text_within_the_caps_is_served(client: httpx.AsyncClient) -> None:
    assert (await client.post("/fill-mask", json={"inputs": "é" * 40 + "[MASK]"})).status_code == 200
    assert (await client.post("/classify-text", json={"inputs": ["a", "b", "c", "d"]})).status_code == 200
    assert_error(
        await client.post("/classify-text", json={"inputs": ["a"] * 5}),
        413,
        "payload_too_large",
        "5 inputs",
        "at most 4",
    )


async def test_image_pixels_are_refused_from_the_header(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels decoded"))
    for data in (image_file(200, 200), png_claiming(101, 100), png_claiming(100_000, 100_000)):
        r = await client.post("/classify-image", content=data, headers={"Content-Type": "image/png"})
        assert_error(r, 413, "payload_too_large", "at most 10000 pixels")
    r = await client.post("/classify-image", content=image_file(200, 200))
    assert_error(r, 413, "payload_too_large", "200x200")


async def test_image_within_the_pixel_cap_is_served(client: httpx.AsyncClient) -> None:
    assert (await client.post("/classify-image", content=image_file(100, 100))).status_code == 200


@pytest.mark.parametrize(
    "path, body",
    [
        ("/fill-mask", nested_json(9)),
        ("/fill-mask", b"[" * 400_000 + b"]" * 400_000),  # json.loads would raise RecursionError
        ("/classify-image", nested_json(9)),
    ],
)
async def test_deep_json_is_refused_before_parsing(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, path: str, body: bytes
) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed"))
        r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "bad_request", "nested more than 8 levels")


async def test_only_the_json_header_of_a_binary_tensor_body_is_scanned(client: httpx.AsyncClient) -> None:
    """Raw tensor bytes after an `Inference-Header-Content-Length` header are not JSON; a deep header still is."""
    raw = b"[" * 64  # tensor bytes that would look 64 levels deep
    header = json.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()
    r = await client.post(
        "/v2/models/mlm/infer",
        content=header + raw,
        headers={"Content-Type": "application/json", "Inference-Header-Content-Length": str(len(header))},
    )
    assert "nested more than" not in r.text
    deep = nested_json(9)
    r = await client.post(
        "/v2/models/mlm/infer",
        content=deep + raw,
        headers={"Content-Type": "application/json", "Inference-Header-Content-Length": str(len(deep))},
    )
    assert r.status_code == 400 and "nested more than 8 levels" in r.text


async def test_json_at_the_depth_limit_reaches_the_route(client: httpx.AsyncClient) -> None:
    r = await client.post("/fill-mask", content=nested_json(8), headers={"Content-Type": "application/json"})
    assert_error(r, 422, "invalid_input", "inputs")  # the schema's answer, not the depth guard's
    ok = await client.post("/fill-mask", json={"inputs": "[" * 50 + "[MASK]", "parameters": {"top_k": 2}})
    assert ok.status_code == 200


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf", "1e999", "\u00e9"])
async def test_bad_request_timeout_header_is_422(client: httpx.AsyncClient, value: str) -> None:
    r = await client.post("/fill-mask", json=MASKED, headers={"X-Request-Timeout": value.encode("latin-1")})
    assert_error(r, 422, "invalid_input", "X-Request-Timeout")


async def test_request_timeout_header_extends_and_shortens_the_deadline(
    make_settings: Callable[..., Settings], gate, read_metric
) -> None:
    settings = make_settings(
        server={"request_timeout_s": 0.5, "max_request_timeout_s": 20, "preload": ["mlm"]},
        max_batch_size=1,
        max_delay_ms=0,
    )
    app = build_app(settings, loader=gate.loader)
    async with open_client(app) as client:
        while (await client.get("/health/ready")).status_code != 200:
            await asyncio.sleep(0.05)
        patient = asyncio.create_task(client.post("/fill-mask", json=MASKED, headers={"X-Request-Timeout": "20"}))
        assert await asyncio.to_thread(gate.entered.wait, 10)
        started = time.monotonic()
        hasty = await client.post("/fill-mask", json={"inputs": "b [MASK]"}, headers={"X-Request-Timeout": "0.1"})
        assert_error(hasty, 504, "timeout")
        assert time.monotonic() - started < 0.45  # its own 0.1 s, not the default 0.5 s
        default = await client.post("/fill-mask", json={"inputs": "c [MASK]"})
        assert_error(default, 504, "timeout")
        gate.open.set()
        assert (await patient).status_code == 200  # ran past the default 0.5 s, within its 20 s
        assert gate.forwards == 1  # the two that timed out in the queue never reached the model
        metrics = (await client.get("/metrics")).text
        assert read_metric(metrics, "perceiver_requests_dropped_total", model="mlm", reason="expired") == 2


async def test_a_model_default_deadline_replaces_the_server_default(
    make_settings: Callable[..., Settings], gate, checkpoints
) -> None:
    models = {
        "mlm": {"task": "fill-mask", "source": str(checkpoints["mlm"]), "max_batch_size": 1, "max_delay_ms": 0},
        "patient": {
            "task": "fill-mask",
            "source": str(checkpoints["mlm"]),
            "max_batch_size": 1,
            "max_delay_ms": 0,
            "request_timeout_s": {"cpu": 20.0},
        },
    }
    settings = make_settings(server={"request_timeout_s": 0.3, "preload": ["mlm", "patient"]}, models=models)
    app = build_app(settings, loader=gate.loader)
    async with open_client(app) as client:
        while (await client.get("/health/ready")).status_code != 200:
            await asyncio.sleep(0.05)
        patient = asyncio.create_task(client.post("/fill-mask?model=patient", json=MASKED))
        assert await asyncio.to_thread(gate.entered.wait, 10)
        await asyncio.sleep(0.5)  # past the server's default 0.3 s
        hasty = await client.post("/fill-mask?model=patient", json=MASKED, headers={"X-Request-Timeout": "0.1"})
        assert_error(hasty, 504, "timeout")  # the header still shortens it
        gate.open.set()
        assert (await patient).status_code == 200  # the model's own 20 s on the CPU


def wav(seconds: float, rate: int = 8_000) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * rate), np.float32), rate, format="WAV")
    return buffer.getvalue()


async def test_clip_frames_and_audio_seconds_are_capped(client: httpx.AsyncClient) -> None:
    def upload(frames: int, audio: bytes | None = None) -> dict[str, Any]:
        parts = {"video": ("clip.npy", npy_file(np.zeros((frames, 16, 16, 3), np.uint8)), "application/octet-stream")}
        if audio is not None:
            parts["audio"] = ("clip.wav", audio, "audio/wav")
        return {"files": parts}

    assert_error(await client.post("/autoencode-video", **upload(4)), 413, "payload_too_large", "at most 3")
    assert_error(await client.post("/autoencode-video", **upload(2, wav(1.5))), 413, "payload_too_large", "at most 1 s")
    assert (await client.post("/autoencode-video", **upload(3, wav(0.9)))).status_code == 200
