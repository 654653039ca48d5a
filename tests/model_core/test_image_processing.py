"""preprocess_images parity with transformers' PerceiverImageProcessor (the oracle).

Without torchvision, PerceiverImageProcessor() is the PIL backend. Its default
rejects non-RGB input, so non-RGB cases use the oracle with do_convert_rgb=True.
"""

from __future__ import annotations

import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from model_core.image_processing import DEFAULT, ImageProcessingConfig, preprocess_images

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
LEGACY_HUB_DICT = {
    "crop_size": 256,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "PerceiverFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 224,
}


def _make_hf(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.PerceiverImageProcessor(**kwargs)


@pytest.fixture(scope="module")
def hf():
    return _make_hf()


def _oracle(hf, images, **kwargs) -> torch.Tensor:
    return hf(images, return_tensors="pt", **kwargs).pixel_values


def _rgb(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    # A smooth gradient plus noise: bicubic overshoot and clipping both get exercised.
    base = np.linspace(0, 255, h * w).reshape(h, w)
    noise = rng.integers(-60, 60, shape)
    grad = base if channels == 1 else base[..., None]
    return np.clip(grad + noise, 0, 255).astype(np.uint8)


def _assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.float32
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= ATOL


def test_backend_is_pil(hf):
    # Documents which transformers backend the module docstring claims to match.
    assert type(hf).__name__ == "PerceiverImageProcessorPil"


@pytest.mark.parametrize(
    "hw", [(225, 301), (301, 225), (17, 33), (1, 1), (2, 3), (224, 224), (256, 256), (1000, 1500), (480, 640)]
)
def test_rgb_pil_parity(hf, hw):
    image = PIL.Image.fromarray(_rgb(*hw))
    out = preprocess_images([image])
    assert out.shape == (1, 3, 224, 224)
    _assert_close(out, _oracle(hf, image))


@pytest.mark.parametrize("hw", [(225, 301), (17, 33), (640, 480)])
def test_rgb_numpy_parity(hf, hw):
    array = _rgb(*hw, seed=1)
    _assert_close(preprocess_images([array]), _oracle(hf, array, input_data_format="channels_last"))


def test_batch_of_mixed_sizes(hf):
    sizes = [(225, 301), (50, 40), (300, 300)]
    images = [PIL.Image.fromarray(_rgb(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]
    out = preprocess_images(images)
    assert out.shape == (3, 3, 224, 224) and out.is_contiguous()
    _assert_close(out, _oracle(hf, images))


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "1"])
def test_mode_conversion_parity(hf, mode):
    rgba = _rgb(123, 77, seed=2, channels=4)
    image = PIL.Image.fromarray(rgba).convert(mode)
    _assert_close(preprocess_images([image]), _oracle(hf, image, do_convert_rgb=True))


def test_palette_with_transparency_parity(hf):
    image = PIL.Image.fromarray(_rgb(64, 80, seed=3)).convert("P")
    image.info["transparency"] = 7
    _assert_close(preprocess_images([image]), _oracle(hf, image, do_convert_rgb=True))


def test_rgba_is_composited_on_white(hf):
    rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent black
    out = preprocess_images([PIL.Image.fromarray(rgba)])
    white = preprocess_images([np.full((32, 32, 3), 255, np.uint8)])
    _assert_close(out, white)


@pytest.mark.parametrize("channels", [1, 4])
def test_numpy_non_rgb_parity(hf, channels):
    array = _rgb(90, 61, seed=4, channels=4)[..., :channels]
    expected = _oracle(hf, array, do_convert_rgb=True, input_data_format="channels_last")
    _assert_close(preprocess_images([array]), expected)


def test_numpy_2d_greyscale_equals_pil_l(hf):
    # transformers cannot take a bare HxW array; the PIL "L" image is the oracle.
    array = _rgb(45, 70, seed=5, channels=1)
    expected = _oracle(hf, PIL.Image.fromarray(array), do_convert_rgb=True)
    _assert_close(preprocess_images([array]), expected)


def test_sixteen_bit_is_scaled_not_clipped(hf):
    array16 = _rgb(40, 50, seed=6, channels=1).astype(np.uint16) * 257
    image16 = PIL.Image.fromarray(array16)
    assert image16.mode == "I;16"
    # Deliberate difference: we scale 16 -> 8 bits; transformers (PIL convert) clips at 255.
    as_8bit = PIL.Image.fromarray((array16 // 257).astype(np.uint8))
    expected = _oracle(hf, as_8bit, do_convert_rgb=True)
    _assert_close(preprocess_images([image16]), expected)
    _assert_close(preprocess_images([array16]), expected)
    clipped = _oracle(hf, image16, do_convert_rgb=True)
    assert (clipped - expected).abs().max() > 0.5


def test_default_config_matches_transformers_defaults(hf):
    assert DEFAULT.size == (hf.size["height"], hf.size["width"])
    assert DEFAULT.crop_size == (hf.crop_size["height"], hf.crop_size["width"])
    assert DEFAULT.mean == tuple(hf.image_mean) and DEFAULT.std == tuple(hf.image_std)
    assert DEFAULT.resample == int(hf.resample) == 3
    assert DEFAULT.rescale_factor == hf.rescale_factor


def test_from_dict_legacy_hub_config():
    config = ImageProcessingConfig.from_dict(LEGACY_HUB_DICT)
    assert config == DEFAULT
    hf_legacy = transformers.PerceiverImageProcessor.from_dict(LEGACY_HUB_DICT)
    assert config.size == (hf_legacy.size["height"], hf_legacy.size["width"])
    assert config.crop_size == (hf_legacy.crop_size["height"], hf_legacy.crop_size["width"])


def test_from_dict_new_style_and_defaults():
    config = ImageProcessingConfig.from_dict(
        {
            "size": {"height": 384, "width": 384},
            "crop_size": {"height": 256, "width": 256},
            "do_normalize": False,
        }
    )
    assert config.size == (384, 384) and config.crop_size == (256, 256) and not config.do_normalize
    assert ImageProcessingConfig.from_dict({}) == DEFAULT
    with pytest.raises(ValueError):
        ImageProcessingConfig.from_dict({"size": {"shortest_edge": 224}})


@pytest.mark.parametrize("hw", [(225, 301), (40, 90)])
def test_non_default_config_parity(hw):
    # size > crop_size makes the crop larger than the image: the zero-padding path.
    kwargs = {"size": {"height": 300, "width": 260}, "crop_size": {"height": 256, "width": 256}}
    hf_big = _make_hf(**kwargs)
    config = ImageProcessingConfig.from_dict(kwargs)
    image = PIL.Image.fromarray(_rgb(*hw, seed=7))
    out = preprocess_images([image], config)
    assert out.shape == (1, 3, 300, 260)
    _assert_close(out, _oracle(hf_big, image))


def test_rejects_bad_input():
    with pytest.raises(TypeError):
        preprocess_images([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError):
        preprocess_images([np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(ValueError):
        preprocess_images([])
