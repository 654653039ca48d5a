"""Output amplification: an answer, and the work to build it, is bounded by limits checked from the request
before the model runs (masks per text, ranked entries per answer, answer bytes), on every route; large answers
and large request bodies are handled off the event loop."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from server.app import build_app
from server.settings import Settings
from tests.server.crafted import image_file
from tests.server.support import assert_error, assert_v2_error, open_client

pytestmark = pytest.mark.anyio
MASK = "[MASK]"


def v2_text(text: list[str], **parameters: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(text)], "data": text}],
        "parameters": parameters,
    }


@pytest.fixture
def app_with(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    def make(**server: Any) -> Any:
        return open_client(build_app(make_settings(server=server)))

    return make


# ---------------------------------------------------------------------------------------- [MASK]s per text


async def test_masks_per_text_are_bounded_on_every_text_path(app_with: Callable[..., Any]) -> None:
    async with app_with(max_masks_per_text=4) as client:
        ok = await client.post("/fill-mask", json={"inputs": "a" + MASK * 4})
        assert ok.status_code == 200 and len(ok.json()) == 4
        r = await client.post("/fill-mask", json={"inputs": "a" + MASK * 5})
        assert_error(r, 413, "payload_too_large", "5 [MASK]s", "at most 4", "max_masks_per_text")
        r = await client.post("/fill-mask", json={"inputs": ["a" + MASK, "b" + MASK * 9]})
        assert_error(r, 413, "payload_too_large", "inputs[1]", "max_masks_per_text")
        assert_v2_error(
            await client.post("/v2/models/mlm/infer", json=v2_text(["x" + MASK * 6])),
            413,
            "text[0]",
            "max_masks_per_text",
        )
        ids = [4, *[3] * 5, 5]  # [CLS] five mask tokens [SEP]
        r = await client.post(
            "/v2/models/mlm/infer",
            json={"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, len(ids)], "data": ids}]},
        )
        assert_v2_error(r, 413, "input_ids[0]", "mask tokens", "max_masks_per_text")


# ---------------------------------------------------------------------------------------- ranked entries


@pytest.mark.parametrize(
    "payload, entries",
    [
        ({"inputs": "a" + MASK * 5, "parameters": {"top_k": 5}}, 25),  # masks x top_k
        ({"inputs": ["a" + MASK * 2] * 3, "parameters": {"top_k": 4}}, 24),  # texts x masks x top_k
        ({"inputs": "a" + MASK, "parameters": {"top_k": 1000}}, 262),  # top_k counts as the vocabulary at most
        # With targets: texts x runs x the targets each run ranks (top_k at most).
        ({"inputs": ["a" + MASK * 2 + "b" + MASK] * 7, "parameters": {"targets": ["xy", "z", "w"]}}, 42),
    ],
)
async def test_fill_mask_candidates_are_bounded(app_with: Callable[..., Any], payload: dict, entries: int) -> None:
    async with app_with(max_candidates=20) as client:
        r = await client.post("/fill-mask", json=payload)
        assert_error(r, 413, "payload_too_large", f"{entries} ranked entries", "max_candidates", "top_k")


async def test_candidates_at_the_limit_are_answered(app_with: Callable[..., Any]) -> None:
    async with app_with(max_candidates=20) as client:
        r = await client.post("/fill-mask", json={"inputs": "a" + MASK * 5, "parameters": {"top_k": 4}})
        assert r.status_code == 200 and [len(c) for c in r.json()] == [4] * 5
        many_masks = {"inputs": "a" + MASK * 100, "parameters": {"targets": ["x" * 100, "y" * 100]}}  # one run
        r = await client.post("/fill-mask", json=many_masks)
        assert r.status_code == 200 and [c["token_str"][0] for c in r.json()] in (["x", "y"], ["y", "x"])


async def test_label_lists_are_bounded(app_with: Callable[..., Any]) -> None:
    async with app_with(max_candidates=20, max_inputs=64) as client:
        r = await client.post("/classify-text", json={"inputs": ["nice"] * 8})  # 8 texts x 3 labels
        assert_error(r, 413, "payload_too_large", "24 ranked entries", "max_candidates")
        r = await client.post("/classify-text", json={"inputs": ["nice"] * 8, "parameters": {"top_k": 2}})
        assert r.status_code == 200 and all(len(labels) == 2 for labels in r.json())
        rows = {"name": "text", "datatype": "BYTES", "shape": [8], "data": ["nice"] * 8}
        asked = {"inputs": [rows], "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}
        assert_v2_error(await client.post("/v2/models/sentiment/infer", json=asked), 413, "max_candidates")
        assert_v2_error(
            await client.post("/v2/models/mlm/infer", json=v2_text(["a" + MASK * 5], top_k=5)), 413, "max_candidates"
        )
        only_logits = {**v2_text(["a" + MASK * 5], top_k=5), "outputs": [{"name": "logits"}]}
        assert (await client.post("/v2/models/mlm/infer", json=only_logits)).status_code == 200


# ---------------------------------------------------------------------------------------- answer bytes


async def test_fill_mask_answer_size_is_bounded_before_the_model_runs(app_with: Callable[..., Any]) -> None:
    text = "x" * 200 + MASK * 20
    async with app_with(max_response_mb=0.05) as client:
        r = await client.post("/fill-mask", json={"inputs": text, "parameters": {"top_k": 20}})  # 400 x ~260 B
        assert_error(r, 413, "payload_too_large", "max_response_mb", "lower top_k")
        assert "X-Batch-Size" not in r.headers  # refused before any batch
        assert (await client.post("/fill-mask", json={"inputs": text, "parameters": {"top_k": 2}})).status_code == 200


async def test_a_candidate_repeats_its_input_once(app_with: Callable[..., Any]) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 5 + MASK
    async with app_with() as client:
        r = await client.post("/fill-mask", json={"inputs": text, "parameters": {"top_k": 5}})
    candidates = r.json()
    assert len(candidates) == 5 and set(candidates[0]["run"]) == {"start", "end", "fill"}
    assert len(r.content) < 5 * (len(text) + 200)


async def test_flow_answer_size_is_bounded_from_the_headers(
    app_with: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.tasks.optical_flow as flow

    def never(*_: Any) -> Any:
        raise AssertionError("frames decoded for an answer over the limit")

    frames = {"frame1": image_file(200, 160, seed=1), "frame2": image_file(200, 160, seed=2)}
    files = {name: (f"{name}.png", data, "image/png") for name, data in frames.items()}
    async with app_with(max_response_mb=0.3) as client:  # npy: 256 KB; json: 341 KB
        assert (await client.post("/optical-flow", files=files)).status_code == 200
        monkeypatch.setattr(flow, "decode_frame", never)
        r = await client.post("/optical-flow?format=json", files=files)
        assert_error(r, 413, "payload_too_large", "200x160", "max_response_mb", "format=npy")
        body = {name: base64.b64encode(data).decode() for name, data in frames.items()}
        pair = [{"name": n, "datatype": "BYTES", "shape": [2], "data": [body[n]] * 2} for n in ("frame1", "frame2")]
        assert_v2_error(
            await client.post("/v2/models/flow/infer", json={"inputs": pair}),
            413,
            "max_response_mb",
            "binary_data_output",
        )


async def test_v2_answer_size_counts_the_encoding_asked_for(app_with: Callable[..., Any]) -> None:
    rows = ["a" + MASK * 10] * 4  # logits [4, 10, 262]: ~250 KB as JSON numbers, 42 KB binary
    async with app_with(max_response_mb=0.1) as client:
        as_json = {**v2_text(rows), "outputs": [{"name": "logits"}]}
        assert_v2_error(await client.post("/v2/models/mlm/infer", json=as_json), 413, "max_response_mb")
        binary = {**v2_text(rows, binary_data_output=True), "outputs": [{"name": "logits"}]}
        r = await client.post("/v2/models/mlm/infer", json=binary)
        assert r.status_code == 200 and int(r.headers["Inference-Header-Content-Length"]) < len(r.content)


# ---------------------------------------------------------------------------------------- off the event loop


class ThreadLog:
    """Records the thread each call of a wrapped function ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.threads.append(threading.get_ident())
            return fn(*args, **kwargs)

        return recorded


async def test_large_answers_are_built_off_the_event_loop(
    app_with: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.http.exchange as serving

    log = ThreadLog()
    monkeypatch.setattr(serving, "json_bytes", log.wrap(serving.json_bytes))
    loop_thread = threading.get_ident()
    async with app_with() as client:
        small = await client.post("/fill-mask", json={"inputs": "a" + MASK, "parameters": {"top_k": 5}})
        large = await client.post("/fill-mask", json={"inputs": "a" + MASK * 30, "parameters": {"top_k": 20}})
        labels = await client.post("/classify-text", json={"inputs": "nice"})
    assert [r.status_code for r in (small, large, labels)] == [200] * 3
    assert log.threads[0] == loop_thread and log.threads[1] != loop_thread and log.threads[2] == loop_thread


@pytest.mark.parametrize("process_bytes", [2**30, 100_000])  # large bodies on a thread; in the helper process
async def test_large_json_bodies_are_parsed_off_the_event_loop(
    make_settings: Callable[..., Settings], process_bytes: int
) -> None:
    """Every route's large JSON body (the admission scan included) is parsed by the offload, never inline."""
    app = build_app(make_settings(server={"max_text_bytes": 200_000}))
    offload = app.state.offload
    offload.process_bytes = process_bytes
    placed: list[tuple[str, int]] = []
    run = offload.run

    async def recorded(fn: Callable[..., Any], body: bytes, *args: Any, **kwargs: Any) -> Any:
        placed.append((fn.__name__, len(body)))
        return await run(fn, body, *args, **kwargs)

    offload.run = recorded
    padding = " " * 150_000  # the body is large; its content is not
    picture = base64.b64encode(image_file()).decode()
    frame = base64.b64encode(image_file(64, 48)).decode()
    text = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a[MASK]"]}
    cases = [
        ("/fill-mask", '{"inputs": "a[MASK]"}'),
        ("/classify-text", '{"inputs": "nice"}'),
        ("/classify-image", f'{{"inputs": "{picture}"}}'),
        ("/optical-flow", f'{{"frame1": "{frame}", "frame2": "{frame}"}}'),
        ("/v2/models/mlm/infer", json_text({"inputs": [text]})),
    ]
    async with open_client(app) as client:
        for route, payload in cases:
            placed.clear()
            r = await client.post(route, content=payload + padding, headers={"Content-Type": "application/json"})
            assert r.status_code == 200, (route, r.text)
            assert [size for _, size in placed] == [len(payload + padding)] * 2, (route, placed)  # scan, then parse
        invalid = await client.post(
            "/fill-mask", content='{"inputs": [1]}' + padding, headers={"Content-Type": "application/json"}
        )
        assert_error(invalid, 422, "invalid_input", "inputs")
        assert (offload._pool is not None) == (process_bytes < 2**30)  # the helper process was used
    assert offload._pool is None  # and stopped with the app


def json_text(value: Any) -> str:
    import json

    return json.dumps(value)


# ---------------------------------------------------------------------------------------- v2 images


async def test_v2_images_decode_one_at_a_time_and_shrink_at_once(
    app_with: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each image of a BYTES tensor is its own decode unit, decoded and preprocessed in it: no full-size image
    outlives its unit, and one request never holds two."""
    import server.tasks.image_classification as images

    running, peak, shapes, lock = 0, 0, [], threading.Lock()
    real = images.ImageClassificationRunner.prepare_file

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            item = real(self, *args, **kwargs)
            shapes.append(tuple(item.pixels.shape))
            return item
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(images.ImageClassificationRunner, "prepare_file", counted)
    files = [base64.b64encode(image_file(300, 200, seed=i)).decode() for i in range(6)]
    payload = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [6], "data": files}]}
    async with app_with(max_concurrent_decodes=4, max_inputs=8) as client:
        r = await client.post("/v2/models/conv/infer", json=payload)
    assert r.status_code == 200, r.text
    assert peak == 1 and shapes == [(3, 224, 224)] * 6


async def test_v2_image_headers_are_checked_before_the_model(app_with: Callable[..., Any]) -> None:
    from tests.server.crafted import png_claiming

    files = [base64.b64encode(data).decode() for data in (image_file(), png_claiming(5000, 5000))]
    payload = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": files}]}
    async with app_with(max_image_pixels=1_000_000) as client:
        assert_v2_error(await client.post("/v2/models/conv/infer", json=payload), 413, "image[1]", "5000x5000")
        listed = (await client.get("/v1/models")).json()["models"]
    assert next(m for m in listed if m["name"] == "conv")["status"] == "unloaded"


# ---------------------------------------------------------------------------------------- a real server's memory


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


@pytest.fixture(scope="module")
def live(spawn_server: Callable[..., str], models_for, toml_writer, tmp_path_factory) -> tuple[str, int]:
    config = toml_writer(
        tmp_path_factory.mktemp("config") / "serve.toml", {"server": {"device": "cpu"}, "models": models_for()}
    )
    base = spawn_server("--config", str(config), "--preload", "mlm", "conv", "--log-level", "warning")
    import psutil

    port = int(base.rsplit(":", 1)[1])
    pid = next(
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
    )
    return base, pid


@pytest.mark.slow
def test_amplifying_requests_cost_the_server_no_memory(live: tuple[str, int]) -> None:
    """The requests that once built gigabytes of answer: hundreds of [MASK]s in several texts, top_k up to the
    vocabulary. Default limits; the server's peak RSS barely moves."""
    base, pid = live
    with httpx.Client(base_url=base, timeout=60) as client:
        assert client.post("/fill-mask", json={"inputs": "a" + MASK}).status_code == 200  # warm
        before = peak_rss_mb(pid)
        for payload in [
            {"inputs": [MASK * 250] * 5, "parameters": {"top_k": 262}},
            {"inputs": [MASK * 254] * 64, "parameters": {"top_k": 40}},
            {"inputs": ["a" * 100 + MASK * 150] * 64, "parameters": {"top_k": 1000}},
            {"inputs": [MASK * 300] * 3},
        ]:
            r = client.post("/fill-mask", json=payload)
            assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
        growth = peak_rss_mb(pid) - before
    assert growth < 64, f"peak RSS grew {growth:.0f} MB"


@pytest.mark.slow
def test_v2_large_images_in_one_tensor_cost_one_image_at_a_time(live: tuple[str, int]) -> None:
    """16 PNGs of 4000x4000 (16 MB grey, 48 MB as RGB each) in one BYTES tensor: a 0.3 MB body that once
    decoded every image at full size at once."""
    from tests.server.crafted import png_bomb

    base, pid = live

    def payload(picture: bytes) -> dict[str, Any]:
        data = [base64.b64encode(picture).decode()] * 16
        return {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [16], "data": data}],
            "outputs": [{"name": "labels"}],
        }

    with httpx.Client(base_url=base, timeout=120) as client:
        # Warm with 16 small images: the peak then holds the batch of 16's forward, whatever the thread count.
        assert client.post("/v2/models/conv/infer", json=payload(image_file())).status_code == 200
        before = peak_rss_mb(pid)
        r = client.post("/v2/models/conv/infer", json=payload(png_bomb(4000)))
        growth = peak_rss_mb(pid) - before
    assert r.status_code == 200, r.text
    assert [o["shape"] for o in r.json()["outputs"]] == [[16, 4]]
    # What is left is decoding: ~100 MB one image at a time (48 MB as RGB, and its shrinking); ~770 MB all at once.
    assert growth < 200, f"decoding grew the peak RSS by {growth:.0f} MB (16 images at once would be ~770 MB)"


def test_limits_are_settings() -> None:
    from server.limits import Limits
    from server.settings import ServerSettings

    limits = Limits.of(ServerSettings(max_masks_per_text=7, max_candidates=9, max_response_mb=2))
    assert (limits.max_masks_per_text, limits.max_candidates, limits.max_response_bytes) == (7, 9, 2 * 2**20)
    assert np.isclose(Limits.of(ServerSettings()).max_response_bytes / 2**20, 128)


# ---------------------------------------------------------------------------------------- video windows


def clip_upload(frames: int) -> dict[str, Any]:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).integers(0, 256, (frames, 16, 16, 3), dtype=np.uint8))
    return {"files": {"video": ("clip.npy", buffer.getvalue(), "application/octet-stream")}}


@pytest.mark.parametrize("query", ["", "&async=true"])
async def test_video_labels_and_reconstruction_are_bounded(app_with: Callable[..., Any], query: str) -> None:
    # The test model: windows of 2 frames of 16x16, 32 audio samples a frame, 5 labels.
    async with app_with(max_candidates=10, max_response_mb=0.005) as client:  # 5242 bytes
        r = await client.post(f"/autoencode-video?top_k=5{query}", **clip_upload(8))  # 4 windows x 5 labels
        assert_error(r, 413, "payload_too_large", "20 ranked entries", "4 windows x top_k 5", "max_candidates")
        r = await client.post(f"/autoencode-video?top_k=2{query}", **clip_upload(8))
        assert r.status_code == (202 if query else 200), r.text
        r = await client.post(f"/autoencode-video?outputs=reconstruction{query}", **clip_upload(8))  # 7168 bytes
        assert_error(r, 413, "payload_too_large", "8 frames of 16x16", "max_response_mb", "outputs=labels")
        r = await client.post(f"/autoencode-video?outputs=reconstruction{query}", **clip_upload(4))  # 3584 bytes
        assert r.status_code == (202 if query else 200), r.text
