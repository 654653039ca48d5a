"""image-classification: decode (server.media.image) -> preprocess (model_core, 224x224) -> classify. Labels from
id2label."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from model_core import PerceiverForTask
from model_core.image_processing import DEFAULT, ImageProcessingConfig, center_crop_box, preprocess_images
from server.errors import ErrorCode, ServeError
from server.limits import ImageLimits
from server.media import image as image_files
from server.tasks.labels import DEFAULT_TOP_K, Function, Labels


@dataclass(frozen=True)
class ImageItem:
    pixels: torch.Tensor  # (3, H, W) float32, preprocessed


class ImageClassificationRunner:
    def __init__(
        self, model: PerceiverForTask, *, device: torch.device, dtype: torch.dtype, folder: Path | None = None
    ) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.labels = Labels.of(model.config)
        self.processing: dict[str, Any] = {}
        preprocessor = folder / "preprocessor_config.json" if folder else None
        if preprocessor is not None and preprocessor.is_file():
            self.processing["config"] = ImageProcessingConfig.from_dict(json.loads(preprocessor.read_text()))

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(H, W) of the preprocessed pixels the model takes."""
        return self.processing.get("config", DEFAULT).size

    def prepare(self, image: Image.Image) -> ImageItem:
        """CPU work: call off the event loop."""
        return ImageItem(preprocess_images([image], **self.processing)[0])  # (3, 224, 224)

    def prepare_file(self, data: bytes, limits: ImageLimits) -> ImageItem:
        """An image file decoded and shrunk to the model's pixels at once: the full-size image lives only inside
        this call (one decode unit), and is cropped in its own mode before the RGB copy is made (the same pixels as
        `decode_image` then `prepare`). CPU work: call off the event loop."""
        config: ImageProcessingConfig = self.processing.get("config", DEFAULT)

        def cropped_rgb(image: Image.Image) -> Image.Image:
            if config.do_center_crop:
                image = image.crop(center_crop_box(image.width, image.height, config))
            return image if image.mode == "RGB" else image.convert("RGB")

        image = image_files.opened(data, limits, cropped_rgb)
        return ImageItem(preprocess_images([image], dataclasses.replace(config, do_center_crop=False))[0])

    def prepare_pixels(self, pixels: torch.Tensor) -> ImageItem:
        """Pixel values preprocessed by the client, (3, H, W) float32 at `pixel_size`."""
        expected = (3, *self.pixel_size)
        if tuple(pixels.shape) != expected:
            raise ServeError(
                ErrorCode.INVALID_INPUT,
                f"pixel_values of one image must have shape {list(expected)} "
                f"(normalized RGB, as the image processor makes them), got {list(pixels.shape)}",
            )
        if not bool(torch.isfinite(pixels).all()):
            raise ServeError(ErrorCode.INVALID_INPUT, "pixel_values contain NaN or infinite values")
        return ImageItem(pixels.to(torch.float32))

    def key(self, item: ImageItem) -> tuple[int, ...]:
        return tuple(item.pixels.shape)

    def collate(self, items: Sequence[ImageItem]) -> torch.Tensor:
        return torch.stack([i.pixels for i in items]).to(self.device, self.dtype)  # (B, 3, H, W)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).logits  # (B, num_labels)

    def split(self, logits: torch.Tensor, items: Sequence[ImageItem]) -> list[torch.Tensor]:
        return list(logits.float().cpu().unbind(0))  # (C,) each

    def respond(self, logits: torch.Tensor, *, top_k: int | None, function: Function | None) -> list[tuple[str, float]]:
        return self.labels.rank(logits, top_k=top_k or DEFAULT_TOP_K, function=function)
