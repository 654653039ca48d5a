"""Payload builders: inputs a server accepts, at the sizes the model behind each route takes."""

from __future__ import annotations

import base64
import io
import json
import wave

import numpy as np
import pytest
from PIL import Image

from loadtest import payloads as p
from tests.server.conftest import CONFIGS


def test_shapes_follow_the_model_config() -> None:
    assert p.ModelShapes.from_config(CONFIGS["mlm"]).max_tokens == 256
    assert p.ModelShapes.from_config(CONFIGS["flow"]).flow_size == (48, 64)
    video = p.ModelShapes.from_config(CONFIGS["video"])
    assert (video.video_frames, video.video_size, video.audio_samples) == (2, (16, 16), 64)
    assert p.ModelShapes.from_source("deepmind/language-perceiver") == p.ModelShapes()  # hub id: DeepMind sizes


def test_texts_have_masks_and_fit_the_model() -> None:
    shapes = p.ModelShapes(max_tokens=256)
    payloads = p.build("/fill-mask", 60, shapes, seed=1)
    lengths = []
    for payload in payloads:
        text = payload.json["inputs"]
        assert p.MASK in text
        plain = len(text.replace(p.MASK, "x").encode())
        masked = text.count(p.MASK)
        assert plain + 2 <= shapes.max_tokens and masked >= 1
        lengths.append(plain)
    assert min(lengths) < 48 and max(lengths) > 150  # a mix of lengths
    assert p.build("/fill-mask", 60, shapes, seed=1) == payloads  # deterministic per seed
    fixed = p.fill_mask_payloads(np.random.default_rng(0), 8, shapes, fixed_bytes=100)
    assert {len(x.json["inputs"].replace(p.MASK, "x").encode()) for x in fixed} <= set(range(80, 101))


def test_images_decode_at_several_sizes_and_encodings() -> None:
    payloads = p.build("/classify-image", 12, p.ModelShapes())
    sizes, formats, kinds = set(), set(), set()
    for payload in payloads:
        if payload.files:
            data, kind = payload.files["file"][1], "multipart"
        elif payload.json is not None:
            data, kind = base64.b64decode(payload.json["inputs"]), "json"
        else:
            data, kind = payload.body, "raw"
        image = Image.open(io.BytesIO(data))
        sizes.add(image.size)
        formats.add(image.format)
        kinds.add(kind)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        assert pixels.std() > 10  # not a flat image
    assert sizes == set(p.IMAGE_SIZES) and formats == {"JPEG", "PNG"} and kinds == {"raw", "multipart", "json"}


def test_frame_pair_is_a_shifted_view_of_one_scene() -> None:
    rng = np.random.default_rng(3)
    first, second = (
        np.asarray(Image.open(io.BytesIO(b)), dtype=np.int16) for b in p.frame_pair(rng, 64, 48, shift=(5, -3))
    )
    assert first.shape == second.shape == (48, 64, 3)
    # frame2(y, x) shows the scene point frame1(y + dy, x + dx): a camera pan.
    assert np.array_equal(second[3:, :-5], first[:-3, 5:])
    assert not np.array_equal(first, second)


def test_flow_payloads_cover_the_model_tile() -> None:
    payloads = p.build("/optical-flow", 4, p.ModelShapes(flow_size=(48, 64)))
    sizes = {Image.open(io.BytesIO(x.files["frame1"][1])).size for x in payloads}
    assert sizes == {(64, 48), (80, 60)}
    assert {x.params["format"] for x in payloads} == {"npy", "png"}


def test_clip_and_audio_match_the_model() -> None:
    shapes = p.ModelShapes(video_frames=2, video_size=(16, 16), audio_samples=64)
    [payload] = p.build("/autoencode-video", 1, shapes)
    video = np.load(io.BytesIO(payload.files["video"][1]), allow_pickle=False)
    assert video.shape == (2, 16, 16, 3) and video.dtype == np.uint8
    assert not np.array_equal(video[0], video[1])  # something moves
    with wave.open(io.BytesIO(payload.files["audio"][1])) as w:
        assert (w.getnchannels(), w.getnframes(), w.getframerate()) == (1, 64, 48_000)
    assert payload.params == {"outputs": "labels"}


@pytest.mark.parametrize(
    "payload",
    [
        p.Payload("/fill-mask", "json", json={"inputs": "a[MASK]"}),
        p.Payload("/classify-image", "raw", body=b"\x89PNG", content_type="image/png"),
        p.Payload("/optical-flow", "files", params={"format": "npy"}, files={"frame1": ("a.png", b"x", "image/png")}),
    ],
)
def test_payload_sends_itself_with_httpx_and_requests(payload: p.Payload) -> None:
    hx, rq = payload.httpx_kwargs(), payload.requests_kwargs()
    assert hx["params"] == rq["params"] == payload.params
    if payload.json is not None:
        assert hx["json"] == rq["json"] and payload.size == len(json.dumps(payload.json))
    elif payload.files:
        assert hx["files"] == rq["files"]
    else:
        assert hx["content"] == rq["data"] == payload.body
        assert hx["headers"] == rq["headers"] == {"content-type": "image/png"}
