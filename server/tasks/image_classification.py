"""image-classification: decode (Pillow) -> preprocess (model_core, 224x224) -> classify. Labels from id2label."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from model_core.image_processing import ImageProcessingConfig, preprocess_images
from server.errors import ErrorCode, ServeError
from server.schemas import Function
from server.tasks.labels import default_function, rank

MAX_PIXELS = 64_000_000
DEFAULT_TOP_K = 5


def decode_image(data: bytes) -> Image.Image:
    """Bytes of any format Pillow reads -> an RGB image (first frame). CPU work: call off the event loop."""
    if not data:
        raise ServeError(ErrorCode.INVALID_INPUT, "no image: send the image file as the body, a multipart "
                         "upload, or JSON {\"inputs\": \"<base64>\"}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE,
                                 f"image is {image.width}x{image.height}; at most {MAX_PIXELS} pixels are accepted")
            return image.convert("RGB")
    except ServeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, "image is too large to decode safely") from None
    except UnidentifiedImageError:
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                         "body is not an image Pillow can read (PNG, JPEG, WebP, GIF, BMP, TIFF...)") from None
    except Exception as exc:  # truncated or corrupt files raise OSError, ValueError, SyntaxError...
        raise ServeError(ErrorCode.INVALID_INPUT, f"image could not be decoded: {exc}") from None


@dataclass(frozen=True)
class ImageItem:
    pixels: torch.Tensor  # (3, H, W) float32, preprocessed
    top_k: int
    function: Function


class ImageClassificationRunner:
    def __init__(self, model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype,
                 folder: Path | None = None) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        config = model.config
        self.id2label = {int(k): v for k, v in (config.id2label or {}).items()}
        self.function = default_function(config)
        self.processing: dict[str, Any] = {}
        preprocessor = folder / "preprocessor_config.json" if folder else None
        if preprocessor is not None and preprocessor.is_file():
            self.processing["config"] = ImageProcessingConfig.from_dict(json.loads(preprocessor.read_text()))

    def prepare(self, image: Image.Image, *, top_k: int | None, function: Function | None) -> ImageItem:
        """CPU work: call off the event loop."""
        pixels = preprocess_images([image], **self.processing)[0]  # (3, 224, 224)
        return ImageItem(pixels, top_k or DEFAULT_TOP_K, function or self.function)

    def key(self, item: ImageItem) -> tuple[int, ...]:
        return tuple(item.pixels.shape)

    def collate(self, items: Sequence[ImageItem]) -> torch.Tensor:
        return torch.stack([i.pixels for i in items]).to(self.device, self.dtype)  # (B, 3, H, W)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).logits  # (B, num_labels)

    def split(self, logits: torch.Tensor, items: Sequence[ImageItem]) -> list[list[tuple[str, float]]]:
        logits = logits.cpu()
        return [rank(row, id2label=self.id2label, function=i.function, top_k=i.top_k)
                for row, i in zip(logits, items, strict=True)]
