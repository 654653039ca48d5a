"""POST /autoencode-video against transformers' chunk loop, windows, formats, bad input, and
a short request interleaving with a long reconstruction on the same model."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
import torch

from model_core import load_pretrained
from model_core.chunking import output_chunks
from server.app import build_app
from server.engine.loading import LoadedModel, load_model
from server.settings import ModelSpec, Settings, Task
from server.tasks.video_autoencoding import VideoAutoencodingRunner
from tests.model_core.hf_oracle import hf_model, save
from tests.server.support import open_client, with_forward

pytestmark = pytest.mark.anyio
MM = "PerceiverForMultimodalAutoencoding"
LABELS = {str(i): f"action {i}" for i in range(7)}
FRAMES, SIDE, SPF = 2, 16, 32  # the small checkpoints: 2 frames of 16 x 16, 32 audio samples per frame


def npy(frames: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, frames)
    return buffer.getvalue()


def wav(samples: np.ndarray, rate: int = 48_000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def clip(frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (frames, SIDE, SIDE, 3), dtype=np.uint8),
        rng.uniform(-0.5, 0.5, frames * SPF).astype(np.float32),
    )


def parts(frames: np.ndarray, audio: np.ndarray | None = None) -> dict[str, Any]:
    files = {"video": ("clip.npy", npy(frames), "application/octet-stream")}
    if audio is not None:
        files["audio"] = ("clip.wav", wav(audio), "audio/wav")
    return files


def pickled_npy() -> bytes:
    """A .npy of Python objects: loading it would unpickle."""
    buffer = io.BytesIO()
    np.save(buffer, np.empty((2, SIDE, SIDE, 3), dtype=object), allow_pickle=True)
    return buffer.getvalue()


def load_npz(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(response.content), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


ONE_CHUNK_PER_PASS = {"decode_budget_mb": 2**-20}  # a 1-byte decode budget: every chunk its own pass


def settings_for(
    make_settings: Callable[..., Settings], source: Path, *, server: dict[str, Any] | None = None, **batching: Any
) -> Settings:
    table = {"task": "video-autoencoding", "source": str(source), "max_batch_size": 4, "max_delay_ms": 1, **batching}
    return make_settings(server=server, models={"video": table})


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A random transformers model saved as a checkpoint. Its image projection is scaled so
    reconstructions fall inside [0, 1], where uint8 output does not hide differences."""
    model = hf_model(MM, seed=4, id2label=LABELS)
    image = model.perceiver.output_postprocessor.modalities["image"].classifier
    with torch.no_grad():
        image.weight.mul_(0.1)
        image.bias.fill_(0.5)
    return model, save(model, tmp_path_factory.mktemp("hf-video"))


@torch.inference_mode()
def hf_chunk_loop(model: torch.nn.Module, frames: np.ndarray, audio: np.ndarray, num_chunks: int) -> dict[str, Any]:
    """transformers' documented loop: one forward per chunk of output points, concatenated."""
    inputs = {
        "image": torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float() / 255,
        "audio": torch.from_numpy(audio)[None, :, None],
        "label": torch.zeros(1, len(LABELS)),
    }
    image, sound, label = [], [], None
    chunks = output_chunks(num_chunks=num_chunks, image_points=FRAMES * SIDE * SIDE, audio_points=FRAMES * SPF // 4)
    for points in chunks:
        out = model(inputs=inputs, subsampled_output_points=points).logits
        image.append(out["image"])
        sound.append(out["audio"])
        label = out["label"] if label is None else label
    return {
        "video": torch.cat(image, dim=1).reshape(FRAMES, SIDE, SIDE, 3),
        "audio": torch.cat(sound, dim=1)[0],
        "label": label[0],
    }


async def test_reconstruction_and_labels_equal_transformers(make_settings, hf_checkpoint) -> None:
    hf, folder = hf_checkpoint
    frames, audio = clip(FRAMES, seed=1)
    expected = hf_chunk_loop(hf, frames, audio, num_chunks=4)
    async with open_client(build_app(settings_for(make_settings, folder, server=ONE_CHUNK_PER_PASS))) as client:
        both = load_npz(
            await client.post("/autoencode-video?outputs=labels,reconstruction&top_k=3", files=parts(frames, audio))
        )
        labels = await client.post("/autoencode-video?top_k=3", files=parts(frames, audio))
    assert expected["video"].min() > 0.05 and expected["video"].max() < 0.95  # uint8 keeps the differences
    want_video = (expected["video"].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert both["video"].shape == (FRAMES, SIDE, SIDE, 3) and both["video"].dtype == np.uint8
    assert np.abs(both["video"].astype(int) - want_video).max() <= 1
    assert (both["video"] == want_video).mean() > 0.99
    np.testing.assert_allclose(both["audio"], expected["audio"].numpy(), atol=1e-5, rtol=1e-4)
    probs = expected["label"].softmax(-1)
    top = probs.topk(3)
    want = [
        {"label": LABELS[str(i)], "score": p} for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
    for got in (labels.json()["windows"][0]["labels"], json.loads(both["labels"][0])):
        assert [g["label"] for g in got] == [w["label"] for w in want]
        assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-6)


async def test_a_clip_of_two_and_a_half_windows(make_settings, checkpoints) -> None:
    frames, audio = clip(5, seed=2)  # windows [0, 2) [2, 4) [4, 5) + one repeated frame
    async with open_client(build_app(settings_for(make_settings, checkpoints["video"]))) as client:
        labels = (await client.post("/autoencode-video", files=parts(frames, audio))).json()
        both = load_npz(
            await client.post("/autoencode-video?outputs=labels,reconstruction", files=parts(frames, audio))
        )
    assert (labels["frames"], labels["window_frames"]) == (5, FRAMES)
    assert [(w["start_frame"], w["end_frame"], w["padded_frames"]) for w in labels["windows"]] == [
        (0, 2, 0),
        (2, 4, 0),
        (4, 5, 1),
    ]
    assert both["windows"].tolist() == [[0, 2, 0], [2, 4, 0], [4, 5, 1]]
    assert both["video"].shape == (5, SIDE, SIDE, 3) and both["audio"].shape == (5 * SPF,)
    # Each window is its own clip: the last one is frame 4 twice, its audio then silence.
    model = load_pretrained(str(checkpoints["video"]))
    with torch.inference_mode():
        for index, (first, window_frames, window_audio) in enumerate(
            [
                (0, frames[0:2], audio[0:64]),
                (2, frames[2:4], audio[64:128]),
                (4, frames[[4, 4]], np.concatenate([audio[128:160], np.zeros(32, np.float32)])),
            ]
        ):
            inputs = {
                "image": torch.from_numpy(window_frames).permute(0, 3, 1, 2)[None].float() / 255,
                "audio": torch.from_numpy(window_audio)[None, :, None],
                "label": torch.zeros(1, 5),
            }
            out = model(
                inputs,
                subsampled_output_points=output_chunks(
                    num_chunks=1, image_points=FRAMES * SIDE * SIDE, audio_points=FRAMES * SPF // 4
                )[0],
            ).logits
            video = (out["image"].reshape(FRAMES, SIDE, SIDE, 3).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            keep = min(2, 5 - first)
            assert np.abs(both["video"][first : first + keep].astype(int) - video[:keep]).max() <= 1
            np.testing.assert_allclose(
                both["audio"][first * SPF : (first + keep) * SPF], out["audio"][0, : keep * SPF].numpy(), atol=1e-5
            )
            top = out["label"][0].softmax(-1).topk(5)
            assert [s["score"] for s in labels["windows"][index]["labels"]] == pytest.approx(
                top.values.tolist(), abs=1e-6
            )


@pytest.mark.parametrize(
    "query, media_type",
    [
        ("", "application/json"),
        ("?format=npz", "application/x-npz"),
        ("?outputs=reconstruction", "application/x-npz"),
        ("?outputs=reconstruction&format=mp4", "video/mp4"),
        ("?outputs=reconstruction&format=wav", "audio/wav"),
        ("?outputs=reconstruction,labels", "application/x-npz"),
    ],
)
async def test_every_output_format(make_settings, checkpoints, query: str, media_type: str) -> None:
    frames, audio = clip(3, seed=3)
    async with open_client(build_app(settings_for(make_settings, checkpoints["video"]))) as client:
        response = await client.post(f"/autoencode-video{query}", files=parts(frames, audio))
        reference = load_npz(
            await client.post("/autoencode-video?outputs=labels,reconstruction", files=parts(frames, audio))
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media_type)
    assert response.headers["x-clip-frames"] == "3" and response.headers["x-audio-input"] == "provided"
    if media_type == "application/json":
        assert [w["labels"] for w in response.json()["windows"]] == [json.loads(s) for s in reference["labels"]]
    elif media_type == "audio/wav":
        samples, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
        assert rate == 48_000 and np.array_equal(samples, reference["audio"])
    elif media_type == "video/mp4":
        import av

        with av.open(io.BytesIO(response.content)) as container:
            assert sorted(s.type for s in container.streams) == ["audio", "video"]
            assert sum(1 for _ in container.decode(video=0)) == 3
    else:
        arrays = load_npz(response)
        assert int(arrays["sample_rate"]) == 48_000
        assert ("labels" in arrays) == ("labels" in query or "outputs" not in query)
        assert ("video" in arrays) == ("reconstruction" in query)
        for key in set(arrays) & {"video", "audio", "labels"}:
            assert np.array_equal(arrays[key], reference[key])


async def test_without_audio_the_clip_is_silent_and_the_answer_says_so(make_settings, checkpoints) -> None:
    frames, _ = clip(2, seed=5)
    async with open_client(build_app(settings_for(make_settings, checkpoints["video"]))) as client:
        silent = await client.post("/autoencode-video", files=parts(frames))
        zeros = await client.post("/autoencode-video", files=parts(frames, np.zeros(2 * SPF, np.float32)))
    assert silent.json()["audio"] == "silence" and silent.headers["x-audio-input"] == "silence"
    assert zeros.json()["audio"] == "provided"
    assert silent.json()["windows"] == zeros.json()["windows"]


@pytest.mark.parametrize(
    "query, files, code, status",
    [
        ("?outputs=labels&format=mp4", None, "invalid_input", 422),
        ("?outputs=labels,reconstruction&format=wav", None, "invalid_input", 422),
        ("?outputs=everything", None, "invalid_input", 422),
        ("", {"audio": ("a.wav", wav(np.zeros(64, np.float32)))}, "invalid_input", 422),  # no video part
        ("", {"video": ("v.npy", pickled_npy())}, "invalid_input", 422),
        ("", {"video": ("v.mp4", b"\x00\x00\x00\x18ftypmp42 not really a video")}, "unsupported_media_type", 415),
        (
            "",
            {"video": ("v.npy", npy(clip(2)[0])), "audio": ("a.wav", b"RIFF not a wav")},
            "unsupported_media_type",
            415,
        ),
    ],
)
async def test_bad_requests_are_4xx(make_settings, checkpoints, query, files, code, status) -> None:
    async with open_client(build_app(settings_for(make_settings, checkpoints["video"]))) as client:
        response = await client.post(f"/autoencode-video{query}", files=files or parts(clip(2)[0]))
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text


async def test_a_body_that_is_not_multipart_is_415(make_settings, checkpoints) -> None:
    async with open_client(build_app(settings_for(make_settings, checkpoints["video"]))) as client:
        response = await client.post(
            "/autoencode-video", content=npy(clip(2)[0]), headers={"content-type": "application/octet-stream"}
        )
    assert response.status_code == 415 and "multipart" in response.json()["error"]["message"]


@pytest.mark.parametrize("rate", [Fraction(10), Fraction(30_000, 1001)])
async def test_the_mp4_answer_plays_at_the_clip_frame_rate(make_settings, checkpoints, rate: Fraction) -> None:
    import av

    from server import media

    frames, _ = clip(3, seed=7)
    upload = {"video": ("c.mp4", media.write_mp4(frames, None, fps=rate, sample_rate=48_000), "video/mp4")}
    async with open_client(build_app(settings_for(make_settings, checkpoints["video"]))) as client:
        from_mp4 = await client.post("/autoencode-video?outputs=reconstruction&format=mp4", files=upload)
        from_npy = await client.post("/autoencode-video?outputs=reconstruction&format=mp4", files=parts(frames))
    rates = []
    for response in (from_mp4, from_npy):
        assert response.status_code == 200, response.text
        with av.open(io.BytesIO(response.content)) as container:
            rates.append(container.streams.video[0].average_rate)
    assert rates == [rate, 25]  # arrays declare no rate: the model family's 25 frames a second


async def test_without_pyav_containers_and_mp4_output_are_415(make_settings, checkpoints, monkeypatch) -> None:
    from server import media

    frames, audio = clip(2)
    container = media.write_mp4(frames, None, fps=Fraction(48_000, SPF), sample_rate=48_000)
    monkeypatch.setitem(sys.modules, "av", None)
    async with open_client(build_app(settings_for(make_settings, checkpoints["video"]))) as client:
        decoded = await client.post("/autoencode-video", files={"video": ("c.mp4", container, "video/mp4")})
        encoded = await client.post("/autoencode-video?outputs=reconstruction&format=mp4", files=parts(frames))
        arrays = await client.post("/autoencode-video", files=parts(frames, audio))
    for response in (decoded, encoded):
        assert response.status_code == 415 and "PyAV" in response.json()["error"]["message"]
    assert arrays.status_code == 200


@torch.inference_mode()
def test_answers_do_not_depend_on_batch_mates(checkpoints, monkeypatch) -> None:
    """Encodes of two clips and decode passes of two clips (per-item points), batched or alone,
    and grouped under a budget that fits one item per forward."""
    spec = ModelSpec(name="video", task=Task.VIDEO_AUTOENCODING, source=str(checkpoints["video"]))
    runner: VideoAutoencodingRunner = load_model(spec, Settings()).runner
    clips = [runner.prepare(npy(clip(2, seed=s)[0]), wav(clip(2, seed=s)[1])) for s in (6, 7)]
    encodes = [runner.encode_item(c, 0) for c in clips]

    def run(items):
        return runner.split(runner.forward(runner.collate(items)), items)

    latents = run(encodes)
    for alone, together in zip([run([i])[0] for i in encodes], latents, strict=True):
        torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-4)
    passes = [runner.decode_item(latents[0], runner.passes[0]), runner.decode_item(latents[1], runner.passes[-1])]
    together = run(passes)
    runner.budget_bytes = 1  # one item per forward
    for alone, joint in zip([run([p])[0] for p in passes], together, strict=True):
        for field in ("image", "audio", "label"):
            torch.testing.assert_close(getattr(alone, field), getattr(joint, field), atol=1e-5, rtol=1e-4)
    assert len(together[1].image) == len(runner.passes[-1]["image"])


def slow_loader(delay_s: float) -> Callable[[ModelSpec, Settings], LoadedModel]:
    """A loader whose runners' reconstruction passes (decode items with image points) take `delay_s` more; the
    runner counts them in `slowed`."""

    def load(spec: ModelSpec, settings: Settings) -> LoadedModel:
        loaded = load_model(spec, settings)

        def slowed(batch: Any, forward: Callable[[Any], Any]) -> Any:
            if isinstance(batch, list) and any(len(item.image) for item in batch):
                runner.slowed += 1
                time.sleep(delay_s)
            return forward(batch)

        runner = with_forward(loaded.runner, slowed)
        runner.slowed = 0  # reconstruction passes run so far
        return dataclasses.replace(loaded, runner=runner)

    return load


async def test_a_labels_request_interleaves_with_a_long_reconstruction(make_settings, checkpoints) -> None:
    app = build_app(
        settings_for(make_settings, checkpoints["video"], server=ONE_CHUNK_PER_PASS, max_batch_size=1),
        loader=slow_loader(0.2),
    )  # 16 passes of at least 0.2 s
    async with open_client(app) as client:
        long_clip, short_clip = clip(2, seed=8), clip(2, seed=9)
        accepted = await client.post("/autoencode-video?outputs=reconstruction&async=true", files=parts(*long_clip))
        location = accepted.headers["location"]
        while (await client.get(location)).json()["progress"]["done"] < 2:
            await asyncio.sleep(0.02)
        started = time.monotonic()
        labels = await client.post("/autoencode-video", files=parts(*short_clip))
        took = time.monotonic() - started
        job = (await client.get(location)).json()
    assert labels.status_code == 200 and len(labels.json()["windows"]) == 1
    # It waited for at most the pass then running, not for the 14 still to come (2.8 s of sleep alone).
    assert job["status"] == "running" and job["progress"]["done"] < job["progress"]["total"] == 17
    assert took < 2.0
