"""Per-task pre/post-processing and batch functions. `make_runner` picks the one for a loaded model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from server.settings import Task


def make_runner(task: Task, model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype,
                folder: Path | None) -> Any | None:
    """The task's `BatchFunctions` for `model`, or None for tasks served by a later release."""
    if task is Task.FILL_MASK:
        from server.tasks.fill_mask import FillMaskRunner

        return FillMaskRunner(model, device=device)
    if task is Task.TEXT_CLASSIFICATION:
        from server.tasks.text_classification import TextClassificationRunner

        return TextClassificationRunner(model, device=device)
    if task is Task.IMAGE_CLASSIFICATION:
        from server.tasks.image_classification import ImageClassificationRunner

        return ImageClassificationRunner(model, device=device, dtype=dtype, folder=folder)
    if task is Task.OPTICAL_FLOW:
        from server.tasks.optical_flow import OpticalFlowRunner

        return OpticalFlowRunner(model, device=device, dtype=dtype)
    if task is Task.VIDEO_AUTOENCODING:
        from server.tasks.video_autoencoding import VideoAutoencodingRunner

        return VideoAutoencodingRunner(model, device=device, dtype=dtype)
    return None
