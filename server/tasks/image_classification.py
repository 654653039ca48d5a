"""image-classification: decode (Pillow) -> preprocess (model_core, 224x224) -> classify. Labels from id2label."""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image, UnidentifiedImageError

from model_core.image_processing import DEFAULT, ImageProcessingConfig, center_crop_box, preprocess_images
from server.errors import ErrorCode, ServeError
from server.limits import DEFAULT_LIMITS, ImageLimits
from server.schemas import Function
from server.tasks.labels import default_function, label_bytes, rank

DEFAULT_TOP_K = 5
T = TypeVar("T")


def probe_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS.image) -> tuple[int, int]:
    """(width, height) from the file's header, its format and pixel count checked (415, 413); no pixel decoded."""
    return _opened(data, limits, lambda image: image.size)


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS.image) -> Image.Image:
    """Image file bytes in an allowed format -> an RGB image (first frame). CPU work: call off the event loop.

    Image.open reads only the header: the format and the pixel count are refused there (415, 413), so a
    decompression bomb is never decoded. Truncated or corrupt data fails in convert() (422).
    """
    return _opened(data, limits, lambda image: image.convert("RGB"))


def _opened(data: bytes, limits: ImageLimits, use: Callable[[Image.Image], T]) -> T:
    """use(the image opened lazily, its header checked), every failure a ServeError."""
    if not data:
        raise ServeError(ErrorCode.INVALID_INPUT, "no image: send the image file as the body, a multipart "
                         "upload, or JSON {\"inputs\": \"<base64>\"}")
    too_large = f"at most {limits.max_pixels} pixels are accepted (max_image_pixels)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(limits.formats)) as image:
                if image.width * image.height > limits.max_pixels:
                    raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"image is {image.width}x{image.height}; {too_large}")
                return use(image)
    except ServeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"image is too large to decode safely; {too_large}") from None
    except UnidentifiedImageError:
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                         f"body is not an image in an accepted format ({', '.join(limits.formats)})") from None
    except Exception as exc:  # truncated or corrupt files raise OSError, ValueError, SyntaxError...
        raise ServeError(ErrorCode.INVALID_INPUT, f"image could not be decoded: {exc}") from None


@dataclass(frozen=True)
class ImageItem:
    pixels: torch.Tensor  # (3, H, W) float32, preprocessed
    top_k: int
    function: Function
    raw: bool = False  # split returns the logits row (C,) instead of ranked labels


class ImageClassificationRunner:
    def __init__(self, model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype,
                 folder: Path | None = None) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        config = model.config
        self.id2label = {int(k): v for k, v in (config.id2label or {}).items()}
        self.function = default_function(config)
        self.entry_bytes = label_bytes(self.id2label)
        self.processing: dict[str, Any] = {}
        preprocessor = folder / "preprocessor_config.json" if folder else None
        if preprocessor is not None and preprocessor.is_file():
            self.processing["config"] = ImageProcessingConfig.from_dict(json.loads(preprocessor.read_text()))

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(H, W) of the preprocessed pixels the model takes."""
        return self.processing.get("config", DEFAULT).size

    def prepare(self, image: Image.Image, *, top_k: int | None, function: Function | None,
                raw: bool = False) -> ImageItem:
        """CPU work: call off the event loop."""
        pixels = preprocess_images([image], **self.processing)[0]  # (3, 224, 224)
        top_k = min(top_k or DEFAULT_TOP_K, self.model.config.num_labels)
        return ImageItem(pixels, top_k, function or self.function, raw)

    def prepare_file(self, data: bytes, limits: ImageLimits, *, top_k: int | None = None,
                     function: Function | None = None, raw: bool = False) -> ImageItem:
        """An image file decoded and shrunk to the model's pixels at once: the full-size image lives only inside
        this call (one decode unit), and is cropped in its own mode before the RGB copy is made (the same pixels as
        `decode_image` then `prepare`). CPU work: call off the event loop."""
        config: ImageProcessingConfig = self.processing.get("config", DEFAULT)

        def cropped_rgb(image: Image.Image) -> Image.Image:
            if config.do_center_crop:
                image = image.crop(center_crop_box(image.width, image.height, config))
            return image if image.mode == "RGB" else image.convert("RGB")

        image = _opened(data, limits, cropped_rgb)
        pixels = preprocess_images([image], dataclasses.replace(config, do_center_crop=False))[0]  # (3, 224, 224)
        top_k = min(top_k or DEFAULT_TOP_K, self.model.config.num_labels)
        return ImageItem(pixels, top_k, function or self.function, raw)

    def prepare_pixels(self, pixels: torch.Tensor) -> ImageItem:
        """Pixel values preprocessed by the client, (3, H, W) float32 at `pixel_size`; answers logits."""
        expected = (3, *self.pixel_size)
        if tuple(pixels.shape) != expected:
            raise ServeError(ErrorCode.INVALID_INPUT, f"pixel_values of one image must have shape {list(expected)} "
                             f"(normalized RGB, as the image processor makes them), got {list(pixels.shape)}")
        if not bool(torch.isfinite(pixels).all()):
            raise ServeError(ErrorCode.INVALID_INPUT, "pixel_values contain NaN or infinite values")
        return ImageItem(pixels.to(torch.float32), DEFAULT_TOP_K, self.function, raw=True)

    def key(self, item: ImageItem) -> tuple[int, ...]:
        return tuple(item.pixels.shape)

    def collate(self, items: Sequence[ImageItem]) -> torch.Tensor:
        return torch.stack([i.pixels for i in items]).to(self.device, self.dtype)  # (B, 3, H, W)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).logits  # (B, num_labels)

    def split(self, logits: torch.Tensor, items: Sequence[ImageItem]) -> list[list[tuple[str, float]] | torch.Tensor]:
        logits = logits.cpu()
        return [row if i.raw else rank(row, id2label=self.id2label, function=i.function, top_k=i.top_k)
                for row, i in zip(logits, items, strict=True)]
