from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_core.image_processing import preprocess_images
from server.engine.loading import load_model
from server.errors import ErrorCode, ServeError
from server.limits import DEFAULT_LIMITS
from server.media.image import decode_image
from server.settings import ModelSpec, Settings, Task
from server.tasks.image_classification import ImageClassificationRunner


def png(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def runner(checkpoints: dict[str, Path]) -> ImageClassificationRunner:
    spec = ModelSpec(name="conv", task=Task.IMAGE_CLASSIFICATION, source=str(checkpoints["conv"]))
    return load_model(spec, Settings()).runner


@pytest.mark.parametrize(
    "mode, fmt", [("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"), ("RGB", "JPEG"), ("P", "GIF"), ("RGB", "WEBP")]
)
def test_decode_any_pillow_format_to_rgb(mode: str, fmt: str) -> None:
    image = decode_image(png(mode=mode, fmt=fmt))
    assert image.mode == "RGB" and image.size == (64, 48)


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", ErrorCode.INVALID_INPUT),
        (b"definitely not an image", ErrorCode.UNSUPPORTED_MEDIA_TYPE),
        (png()[:60], ErrorCode.INVALID_INPUT),  # truncated
    ],
)
def test_undecodable_input_is_refused(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(ServeError) as info:
        decode_image(data)
    assert info.value.code is code


def test_output_is_identical_alone_and_in_a_batch(runner: ImageClassificationRunner) -> None:
    items = [runner.prepare(decode_image(png(seed=s, width=40 + 30 * s))) for s in range(3)]
    with torch.inference_mode():
        together = runner.split(runner.forward(runner.collate(items)), items)
        alone = [runner.split(runner.forward(runner.collate([i])), [i])[0] for i in items]
    answers = [runner.respond(logits, top_k=4, function=None) for logits in together]
    assert answers == [runner.respond(logits, top_k=4, function=None) for logits in alone]
    labels = answers[0]
    assert {label for label, _ in labels} == {"tabby cat", "golden retriever", "espresso", "volcano"}


def test_pixel_values_and_logits(runner: ImageClassificationRunner) -> None:
    image = decode_image(png())
    by_image = runner.prepare(image)
    by_pixels = runner.prepare_pixels(preprocess_images([image])[0])
    assert runner.pixel_size == (224, 224) and torch.equal(by_pixels.pixels, by_image.pixels)
    with torch.inference_mode():
        first, second = runner.split(runner.forward(runner.collate([by_image, by_pixels])), [by_image, by_pixels])
    assert second.shape == (4,) and torch.allclose(first, second, rtol=0, atol=1e-6)
    ranked = runner.respond(first, top_k=None, function=None)  # the default: 5, at most the 4 classes
    assert [label for label, _ in ranked] == [runner.labels.names[i] for i in first.argsort(descending=True)]


@pytest.mark.parametrize(
    "pixels, says",
    [
        (torch.zeros(3, 112, 112), "[3, 224, 224]"),
        (torch.zeros(1, 224, 224), "[3, 224, 224]"),
        (torch.full((3, 224, 224), float("nan")), "NaN"),
    ],
)
def test_bad_pixel_values_are_refused(runner: ImageClassificationRunner, pixels: torch.Tensor, says: str) -> None:
    with pytest.raises(ServeError) as info:
        runner.prepare_pixels(pixels)
    assert info.value.code is ErrorCode.INVALID_INPUT and says in info.value.message


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "I;16"])
def test_a_file_is_cropped_before_conversion_with_the_same_pixels(runner: ImageClassificationRunner, mode: str) -> None:
    """prepare_file crops in the file's own mode, then converts: the pixels equal decode_image then prepare."""
    rng = np.random.default_rng(3)
    image = (
        Image.fromarray(rng.integers(0, 256, (61, 97, 3), dtype=np.uint8)).convert(mode)
        if mode != "I;16"
        else Image.fromarray(rng.integers(0, 65535, (61, 97), dtype=np.uint16))
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    by_file = runner.prepare_file(data, DEFAULT_LIMITS.image)
    by_image = runner.prepare(decode_image(data))
    assert torch.equal(by_file.pixels, by_image.pixels)
