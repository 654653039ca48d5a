"""Through real uvicorn servers on loopback: a subprocess (`python -m server`) and, where the test must
reach into the app, a server thread of this process."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient, constants
from PIL import Image

from server.app import build_app
from server.models.demo import DEMO_IMAGE_LABELS
from server.settings import Settings

TEXT_LABELS = {"negative", "neutral", "positive"}
IMAGE_LABELS = {"tabby cat", "golden retriever", "espresso", "volcano"}


def png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def live(spawn_server: Callable[..., str], models_for, toml_writer, tmp_path_factory) -> str:
    models = models_for(max_batch_size=8, max_delay_ms=100)
    models["language"] = {"task": "fill-mask", "source": "deepmind/language-perceiver"}
    config = toml_writer(
        tmp_path_factory.mktemp("config") / "serve.toml",
        {"server": {"device": "cpu", "request_timeout_s": 30}, "models": models},
    )
    return spawn_server("--config", str(config), "--preload", "mlm", "--log-level", "warning")


@pytest.fixture
def online_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """InferenceClient refuses every request in hub offline mode, loopback included."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.slow
def test_inference_client_works_unchanged(live: str, online_client: None) -> None:
    [best, *_] = InferenceClient(model=f"{live}/fill-mask").fill_mask("Hello [MASK]orld")
    assert isinstance(best.token, int) and best.sequence.startswith("Hello ") and 0 < best.score <= 1
    per_mask = InferenceClient(model=f"{live}/fill-mask").fill_mask("a[MASK][MASK]b", top_k=2)
    assert len(per_mask) == 2 and len(per_mask[0]) == 2
    ranked = InferenceClient(model=f"{live}/fill-mask").fill_mask("Hello [MASK][MASK]rld", targets=["wo", "Wo", "ye"])
    assert sorted(c.token_str for c in ranked) == ["Wo", "wo", "ye"]  # one run of two masks: two-byte targets
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
    assert {c.sequence for c in ranked} == {"Hello world", "Hello World", "Hello yerld"}
    labels = InferenceClient(model=f"{live}/classify-text").text_classification("what a film", top_k=2)
    assert len(labels) == 2 and {x.label for x in labels} <= TEXT_LABELS
    client = InferenceClient(model=f"{live}/classify-image")
    assert {x.label for x in client.image_classification(png())} == IMAGE_LABELS  # raw bytes
    assert len(client.image_classification(png(), top_k=2)) == 2  # base64 JSON


@pytest.mark.slow
def test_concurrent_requests_batch_and_answer_as_alone(live: str, read_metric) -> None:
    texts = [f"Text {i}: the answer is [MASK][MASK]." + "." * i for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda t: httpx.post(f"{live}/fill-mask", json={"inputs": t}, timeout=30), texts))
    metrics = httpx.get(f"{live}/metrics").text
    alone = [httpx.post(f"{live}/fill-mask", json={"inputs": t}, timeout=30) for t in texts]
    assert max(int(r.headers["X-Batch-Size"]) for r in together) > 1
    assert read_metric(metrics, "perceiver_batch_size_sum", model="mlm") > read_metric(
        metrics, "perceiver_batch_size_count", model="mlm"
    )
    assert [r.json() for r in together] == [r.json() for r in alone]


@pytest.mark.slow
def test_concurrent_first_requests_load_once(live: str, read_metric) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: httpx.post(f"{live}/classify-text", json={"inputs": "hi"}, timeout=30), range(8))
        )
    assert all(r.status_code == 200 for r in answers)
    metrics = httpx.get(f"{live}/metrics").text
    assert read_metric(metrics, "perceiver_model_load_seconds_count", model="sentiment") == 1


@pytest.mark.slow
def test_offline_model_answers_503_and_the_server_stays_healthy(live: str) -> None:
    r = httpx.post(f"{live}/fill-mask?model=language", json={"inputs": "x[MASK]"}, timeout=30)
    assert r.status_code == 503
    message = r.json()["error"]["message"]
    for needle in (
        "'language'",
        "deepmind/language-perceiver",
        "perceiver-serve download language",
        "HF_HUB_OFFLINE",
        "local folder",
    ):
        assert needle in message
    assert httpx.get(f"{live}/health/ready").status_code == 200
    models = {m["name"]: m for m in httpx.get(f"{live}/v1/models").json()["models"]}
    assert models["language"]["status"] == "failed" and models["mlm"]["status"] == "ready"


@pytest.mark.slow
def test_bad_requests_never_take_the_process_down(live: str) -> None:
    bad = [
        dict(url="/fill-mask", content=b"\xff\xfe garbage", headers={"Content-Type": "application/json"}),
        dict(url="/fill-mask", json={"inputs": "no mask"}),
        dict(url="/classify-image", content=b"GIF89a broken"),
        dict(url="/classify-image", content=png()[:80], headers={"Content-Type": "image/png"}),
        dict(url="/classify-image", files={"file": ("x.png", b"\x89PNG\r\n\x1a\n", "image/png")}),
        dict(url="/classify-text", json={"inputs": "\u0000" * 300}),
    ]
    for request in bad:
        r = httpx.post(f"{live}{request.pop('url')}", timeout=30, **request)
        assert 400 <= r.status_code < 500 and "error" in r.json() and "Traceback" not in r.text
    assert httpx.get(f"{live}/health/live").status_code == 200


@pytest.mark.slow
def test_demo_profile_says_its_weights_are_random(spawn_server: Callable[..., str], tmp_path: Path) -> None:
    base = spawn_server("--demo", "--demo-dir", str(tmp_path / "demo"))
    models = httpx.get(f"{base}/v1/models").json()["models"]
    tasks = {m["task"] for m in models}
    assert {"fill-mask", "text-classification", "image-classification"} <= tasks
    assert all(m["random_weights"] for m in models)
    r = httpx.post(f"{base}/classify-image?model=conv", content=png(), timeout=60)
    assert r.status_code == 200 and r.headers["X-Perceiver-Random-Weights"] == "true"
    assert len(r.json()) == 5 and {x["label"] for x in r.json()} <= set(DEMO_IMAGE_LABELS.values())
    r = httpx.post(f"{base}/fill-mask", json={"inputs": "Hi [MASK]"}, timeout=60)
    assert r.status_code == 200 and r.headers["X-Perceiver-Random-Weights"] == "true"


def test_a_client_that_disconnects_is_dropped_before_the_model(
    make_settings: Callable[..., Settings], gate, read_metric, thread_server
) -> None:
    settings = make_settings(server={"preload": ["mlm"]}, max_batch_size=1, max_delay_ms=0)
    with thread_server(build_app(settings, loader=gate.loader)) as base, ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.post, f"{base}/fill-mask", json={"inputs": "a [MASK]"}, timeout=30)
        assert gate.entered.wait(10)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/fill-mask", json={"inputs": "bye [MASK]"}, timeout=0.5)
        deadline = time.monotonic() + 10
        while (
            read_metric(
                httpx.get(f"{base}/metrics").text,
                "perceiver_requests_dropped_total",
                model="mlm",
                reason="disconnected",
            )
            != 1
        ):
            assert time.monotonic() < deadline, "the disconnect was never noticed"
            time.sleep(0.05)
        gate.open.set()
        assert running.result().status_code == 200
    assert gate.forwards == 1
