"""Hostile input, route by route: every answer is a 4xx in the one error shape, fast, and the server carries on."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from server.app import build_app
from server.settings import Settings, build_settings
from tests.server.conftest import models_table
from tests.server.crafted import image_file, nested_json, npy_claiming, npy_file, npz_bomb, png_bomb, png_claiming
from tests.server.support import assert_error, assert_v2_error, open_client

pytestmark = pytest.mark.anyio
JSON = {"Content-Type": "application/json"}
TEXT_ROUTES = ["/fill-mask", "/classify-text"]
PNG = image_file()
HUGE = png_claiming(100_000, 100_000)  # 10 gigapixels claimed, a few bytes of data
BOMB = png_bomb(9_000)  # 81 Mpixel of black, ~80 kB on the wire


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(checkpoints: dict[str, Path]) -> AsyncIterator[httpx.AsyncClient]:
    settings = build_settings({"server": {"device": "cpu", "max_body_mb": 4}, "models": models_table(checkpoints)})
    async with open_client(build_app(settings)) as c:
        yield c


def multipart(**parts: bytes) -> dict[str, Any]:
    return {"files": {name: (f"{name}.bin", data, "application/octet-stream") for name, data in parts.items()}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CLIP = npy_file(np.zeros((2, 16, 16, 3), np.uint8))
WIDE = image_file(80, 60)


# (route, what, request keyword arguments, status). Text routes parse JSON; image routes take bytes.
CASES: list[tuple[str, str, dict[str, Any], int]] = [
    *[
        (route, what, kwargs, status)
        for route in TEXT_ROUTES
        for what, kwargs, status in [
            ("empty body", {"content": b"", "headers": JSON}, 422),
            ("no content type", {"content": b'{"inputs": "a[MASK]"}'}, 422),
            (
                "wrong content type",
                {"content": b"<inputs>a</inputs>", "headers": {"Content-Type": "application/xml"}},
                422,
            ),
            ("not JSON", {"content": b"{inputs: a", "headers": JSON}, 422),
            ("non-UTF-8 bytes", {"content": b'{"inputs": "\xff\xfe[MASK]"}', "headers": JSON}, 400),
            ("lone surrogate", {"content": b'{"inputs": "\\ud800[MASK]"}', "headers": JSON}, 422),
            ("NaN", {"content": b'{"inputs": "a[MASK]", "parameters": {"top_k": NaN}}', "headers": JSON}, 422),
            ("Infinity", {"content": b'{"inputs": Infinity}', "headers": JSON}, 422),
            ("huge top_k", {"json": {"inputs": "a[MASK]", "parameters": {"top_k": 10**12}}}, 422),
            ("unknown parameter", {"json": {"inputs": "a[MASK]", "parameters": {"temperature": 2}}}, 422),
            ("inputs an object", {"json": {"inputs": {"text": "a[MASK]"}}}, 422),
            ("empty text", {"json": {"inputs": ""}}, 422),
            ("deep nesting", {"content": nested_json(10_000), "headers": JSON}, 400),
            ("body over the limit", {"content": b'{"inputs": "' + b"[MASK]" * 800_000 + b'"}', "headers": JSON}, 413),
            ("a PNG", {"content": PNG, "headers": {"Content-Type": "image/png"}}, 422),
        ]
    ],
    ("/fill-mask", "no [MASK]", {"json": {"inputs": "plain text"}}, 422),
    ("/fill-mask", "10 MB of [MASK]", {"json": {"inputs": "[MASK]" * 600_000}}, 413),
    ("/classify-image", "empty body", {"content": b""}, 422),
    ("/classify-image", "wrong content type", {"content": PNG, "headers": {"Content-Type": "text/plain"}}, 415),
    ("/classify-image", "not an image", {"content": b"GIF89a but not really"}, 415),
    ("/classify-image", "truncated PNG", {"content": PNG[:100], "headers": {"Content-Type": "image/png"}}, 422),
    ("/classify-image", "corrupt PNG data", {"content": PNG[:60] + bytes(200) + PNG[260:]}, 422),
    ("/classify-image", "100000x100000 header", {"content": HUGE}, 413),
    ("/classify-image", "PNG bomb", {"content": BOMB}, 413),
    ("/classify-image", "TIFF (not allowed by default)", {"content": image_file(fmt="TIFF")}, 415),
    ("/classify-image", "ICO", {"content": image_file(fmt="ICO")}, 415),
    ("/classify-image", "bad base64", {"json": {"inputs": "%%%"}}, 422),
    ("/classify-image", "base64 of a bomb", {"json": {"inputs": base64.b64encode(BOMB).decode()}}, 413),
    ("/classify-image", "NaN in JSON", {"content": b'{"inputs": NaN}', "headers": JSON}, 422),
    ("/classify-image", "deep nesting", {"content": nested_json(5_000), "headers": JSON}, 400),
    (
        "/classify-image",
        "multipart without boundary",
        {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}},
        400,
    ),
    ("/classify-image", "multipart with a huge image", multipart(file=HUGE), 413),
    ("/classify-image", "multipart with many fields", {"data": {f"f{i}": "x" for i in range(100)}}, 415),
    (
        "/classify-image",
        "multipart without a file",
        {
            "content": b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--x--\r\n',
            "headers": {"Content-Type": "multipart/form-data; boundary=x"},
        },
        422,
    ),
    ("/optical-flow", "empty body", {"content": b""}, 415),
    ("/optical-flow", "wrong content type", {"content": WIDE, "headers": {"Content-Type": "image/png"}}, 415),
    ("/optical-flow", "one frame", multipart(frame1=WIDE), 422),
    ("/optical-flow", "100000x100000 header", multipart(frame1=HUGE, frame2=WIDE), 413),
    (
        "/optical-flow",
        "more pixels than 4096x4096, from the header",
        multipart(frame1=png_claiming(5000, 4000), frame2=WIDE),
        413,
    ),
    ("/optical-flow", "PNG bomb", {"json": {"frame1": b64(BOMB), "frame2": b64(WIDE)}}, 413),
    ("/optical-flow", "truncated frame", multipart(frame1=WIDE, frame2=WIDE[:100]), 422),
    ("/optical-flow", "frames of two sizes", multipart(frame1=WIDE, frame2=image_file(60, 80)), 422),
    ("/optical-flow", "TIFF frame", multipart(frame1=image_file(80, 60, fmt="TIFF"), frame2=WIDE), 415),
    ("/optical-flow", "extra JSON key", {"json": {"frame1": b64(WIDE), "frame2": b64(WIDE), "frame3": "x"}}, 422),
    ("/optical-flow", "NaN in JSON", {"content": b'{"frame1": NaN, "frame2": "x"}', "headers": JSON}, 422),
    ("/optical-flow", "deep nesting", {"content": nested_json(5_000, key="frame1"), "headers": JSON}, 400),
    ("/autoencode-video", "JSON body", {"json": {"video": b64(CLIP)}}, 415),
    ("/autoencode-video", "no video part", multipart(audio=b"RIFF"), 422),
    ("/autoencode-video", "not a video", multipart(video=b"garbage" * 10), 415),
    (
        "/autoencode-video",
        "pickled array",
        multipart(video=npy_file(np.array([{}], dtype=object), allow_pickle=True)),
        422,
    ),
    ("/autoencode-video", "too many frames, from the header", multipart(video=npy_claiming((100_000, 16, 16, 3))), 413),
    ("/autoencode-video", "huge frames, from the header", multipart(video=npy_claiming((2, 100_000, 100_000, 3))), 413),
    ("/autoencode-video", "truncated array", multipart(video=CLIP[:150]), 422),
    ("/autoencode-video", "not audio", multipart(video=CLIP, audio=b"RIFFjunk"), 415),
    ("/v2/models/fill-mask/infer", "deep nesting", {"content": nested_json(5_000), "headers": JSON}, 400),
]


@pytest.mark.parametrize("route, what, kwargs, status", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
async def test_hostile_request_gets_a_clear_4xx(
    client: httpx.AsyncClient, route: str, what: str, kwargs: dict[str, Any], status: int
) -> None:
    started = time.monotonic()
    r = await client.post(route, **kwargs)
    assert r.status_code == status, (what, r.text)
    if route.startswith("/v2/"):  # the protocol's error shape: {"error": "message"}
        assert_v2_error(r, status)
    else:
        assert_error(r, status, r.json()["error"]["code"])
    assert time.monotonic() - started < 10  # refused, never decoded or run at size
    assert (await client.get("/health/live")).status_code == 200


async def test_a_compressed_array_bomb_is_refused_from_its_header(client: httpx.AsyncClient) -> None:
    bomb = npz_bomb((64, 1080, 1920, 3))  # 400 MB of frames in 400 kB
    r = await client.post("/autoencode-video", **multipart(video=bomb))
    assert_error(r, 413, "payload_too_large", "256 MiB")


async def test_a_1x1_image_is_just_an_image(client: httpx.AsyncClient) -> None:
    r = await client.post("/classify-image", content=image_file(1, 1))
    assert r.status_code == 200 and len(r.json()) == 4


async def test_an_allowed_format_list_opens_tiff(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(server={"image_formats": ["PNG", "TIFF"]})
    async with open_client(build_app(settings)) as client:
        assert (await client.post("/classify-image", content=image_file(fmt="TIFF"))).status_code == 200
        assert_error(
            await client.post("/classify-image", content=image_file(fmt="JPEG")),
            415,
            "unsupported_media_type",
            "PNG, TIFF",
        )


def raw_exchange(base: str, request: bytes) -> None:
    """Send `request` on a fresh connection and hang up without reading."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)


def post_head(path: str, length: int, content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def requests_by_status(metrics: str) -> dict[str, float]:
    """perceiver_requests_total summed per status, probes left out."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == "perceiver_requests_total" and not s.labels["route"].startswith("/health/"):
                counts[s.labels["status"]] = counts.get(s.labels["status"], 0) + s.value
    return counts


def wait_for_metric(base: str, read_metric: Callable[..., float], value: float, name: str, **labels: str) -> None:
    deadline = time.monotonic() + 10
    while read_metric(httpx.get(f"{base}/metrics").text, name, **labels) != value:
        assert time.monotonic() < deadline, f"{name}{labels} never reached {value}"
        time.sleep(0.05)


def test_clients_that_disconnect_are_dropped_and_the_server_carries_on(
    make_settings: Callable[..., Settings], gate, read_metric, thread_server
) -> None:
    settings = make_settings(server={"preload": ["mlm"]}, max_batch_size=1, max_delay_ms=0)
    with thread_server(build_app(settings, loader=gate.loader)) as base:
        # Mid-upload: the body never completes (one body read by the admission middleware, one by the route).
        raw_exchange(base, post_head("/fill-mask", 100_000) + b'{"inputs": "a[MASK')
        raw_exchange(base, post_head("/classify-image", 100_000, "image/png") + PNG[:50])
        # While queued: one request holds the model; the next one's client leaves.
        answer: list[httpx.Response] = []
        held = threading.Thread(
            target=lambda: answer.append(httpx.post(f"{base}/fill-mask", json={"inputs": "held [MASK]"}, timeout=30))
        )
        held.start()
        assert gate.entered.wait(10)
        body = b'{"inputs": "gone [MASK]"}'
        raw_exchange(base, post_head("/fill-mask", len(body)) + body)
        wait_for_metric(base, read_metric, 1, "perceiver_requests_dropped_total", model="mlm", reason="disconnected")
        gate.open.set()
        held.join(10)
        assert answer[0].status_code == 200
        assert gate.forwards == 1  # no departed client reached the model
        assert httpx.get(f"{base}/health/live").status_code == 200
        assert httpx.post(f"{base}/fill-mask", json={"inputs": "after [MASK]"}, timeout=30).status_code == 200
        by_status = requests_by_status(httpx.get(f"{base}/metrics").text)
    assert by_status.get("499") == 3, by_status  # each departure is counted as client-closed
    assert not [status for status in by_status if status.startswith("5")], by_status
