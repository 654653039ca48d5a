"""ImageNet preprocessing for the vision Perceivers (learned / fourier / conv).

Matches what `transformers.PerceiverImageProcessor()` returns in a venv without
torchvision, i.e. the PIL backend `PerceiverImageProcessorPil` (transformers 5.23):
center crop to int(224/256 * min(H, W)) square at offset (H - c) // 2 (zero padding
only when the crop is larger than the image, which the defaults never ask for),
PIL bicubic resize of the uint8 crop to 224x224, rescale by 1/255 (float64, then
float32), normalize with the ImageNet mean/std in float32.

Mode conversion follows transformers' `convert_to_rgb` (what it does with
do_convert_rgb=True; its default processor rejects non-RGB input instead):
images with alpha (or a palette/"transparency" entry) are composited onto white,
greyscale is replicated to 3 channels. One deliberate difference: 16-bit greyscale
("I;16*" PIL modes, uint16 arrays) is scaled to 8 bits (round(v / 257)) instead of
PIL's clipping at 255, which would turn almost every 16-bit image white.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _hw(value: Any, default: tuple[int, int]) -> tuple[int, int]:
    """(height, width) from an int (legacy, square), a {"height","width"} dict, or a pair."""
    if value is None:
        return default
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            return (int(value["height"]), int(value["width"]))
        raise ValueError(f"size dict needs 'height' and 'width' keys, got {sorted(value)}")
    height, width = value
    return (int(height), int(width))


def _rgb(values: Sequence[float]) -> tuple[float, float, float]:
    """One value per RGB channel."""
    red, green, blue = (float(v) for v in values)
    return (red, green, blue)


@dataclass(frozen=True)
class ImageProcessingConfig:
    """Sizes are (height, width). `resample` is a PIL filter id (3 = bicubic)."""

    size: tuple[int, int] = (224, 224)
    crop_size: tuple[int, int] = (256, 256)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: int = int(PIL.Image.Resampling.BICUBIC)
    do_center_crop: bool = True
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    rescale_factor: float = 1 / 255

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageProcessingConfig:
        """From a preprocessor_config.json dict (legacy or current); unknown keys are ignored."""
        base = cls()

        def get(key: str, default: Any) -> Any:
            value = d.get(key)
            return default if value is None else value

        return cls(
            size=_hw(d.get("size"), base.size),
            crop_size=_hw(d.get("crop_size"), base.crop_size),
            mean=_rgb(get("image_mean", base.mean)),
            std=_rgb(get("image_std", base.std)),
            resample=int(get("resample", base.resample)),
            do_center_crop=bool(get("do_center_crop", base.do_center_crop)),
            do_resize=bool(get("do_resize", base.do_resize)),
            do_rescale=bool(get("do_rescale", base.do_rescale)),
            do_normalize=bool(get("do_normalize", base.do_normalize)),
            rescale_factor=float(get("rescale_factor", base.rescale_factor)),
        )


DEFAULT = ImageProcessingConfig()

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def to_rgb(image: PIL.Image.Image | np.ndarray) -> PIL.Image.Image:
    """An RGB PIL image; arrays must be uint8/uint16 HxW, HxWx1, HxWx3 or HxWx4."""
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.mode == "RGB" and image.info.get("transparency") is None:
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        return _array_to_rgb(np.asarray(image))
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_rgb(array: np.ndarray) -> PIL.Image.Image:
    if array.dtype == np.uint16 or array.dtype == np.dtype(">u2"):
        array = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (or uint16), got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.shape[-1] == 4:
        # transformers' numpy convert_to_rgb: float64 blend onto white, then round.
        alpha = array[..., 3:4] / 255.0
        array = np.round(alpha * array[..., :3] + (1.0 - alpha) * 255.0).astype(np.uint8)
    return PIL.Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def center_crop_box(width: int, height: int, config: ImageProcessingConfig = DEFAULT) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the crop: (size/crop_size) * min(H, W) at offset (H - c) // 2.

    When the crop is larger than the image the box starts at a negative offset and
    PIL fills the outside with zeros: the same pixels as transformers' pad-then-crop.
    The crop is pointwise-independent of the mode, so a decoder may crop before it
    converts to RGB (a smaller copy) and get the same pixels.
    """
    min_dim = min(height, width)
    ch = int((config.size[0] / config.crop_size[0]) * min_dim)
    cw = int((config.size[1] / config.crop_size[1]) * min_dim)
    top, left = (height - ch) // 2, (width - cw) // 2
    return (left, top, left + cw, top + ch)


def _center_crop(image: PIL.Image.Image, config: ImageProcessingConfig) -> PIL.Image.Image:
    return image.crop(center_crop_box(*image.size, config))


def preprocess_images(
    images: Sequence[PIL.Image.Image | np.ndarray],
    config: ImageProcessingConfig = DEFAULT,
) -> torch.Tensor:
    """(B, 3, size_h, size_w) float32 pixel values for the vision Perceivers.

    Crop and resize run per image in PIL (needed for bit-parity with transformers,
    whose resize is PIL's on the uint8 crop); rescale/normalize run once on the batch.
    """
    if isinstance(images, (PIL.Image.Image, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    if len(images) == 0:
        raise ValueError("no images to preprocess")
    arrays = []
    for image in images:
        rgb = to_rgb(image)
        if config.do_center_crop:
            rgb = _center_crop(rgb, config)
        if config.do_resize:
            h, w = config.size
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), resample=PIL.Image.Resampling(config.resample))
        arrays.append(np.asarray(rgb))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images have different shapes after preprocessing: {sorted(shapes)}")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
    if config.do_rescale:
        pixels = (batch.to(torch.float64) * config.rescale_factor).to(torch.float32)
    else:
        pixels = batch.to(torch.float32)
    if config.do_normalize:
        mean = torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, 3, 1, 1)
        std = torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1)  # (1, 3, 1, 1)
        pixels = (pixels - mean) / std
    return pixels.contiguous()
