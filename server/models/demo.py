"""`--demo`: small randomly initialised checkpoints for every task, to try the API with no weights at hand.

Their answers are meaningless; every surface says so (start-up warning, /v1/models `random_weights`,
response header `X-Perceiver-Random-Weights: true`).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.settings import Settings, Task, build_settings

log = logging.getLogger(__name__)

VERSION = "v1"  # bump when the configs below change, so stale demo folders are not reused
_LATENTS = {"num_latents": 8, "d_latents": 32, "num_blocks": 1, "num_self_attends_per_block": 2,
            "num_self_attention_heads": 2, "num_cross_attention_heads": 1}
DEMO_IMAGE_LABELS = {str(i): name for i, name in enumerate(
    ["tabby cat", "golden retriever", "espresso", "volcano", "lighthouse", "sports car", "macaw", "pizza"])}


@dataclass(frozen=True)
class DemoModel:
    name: str
    task: Task
    config: dict[str, Any]
    default: bool = True
    aliases: list[str] = field(default_factory=list)


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel("demo-fill-mask", Task.FILL_MASK, {
        "architectures": ["PerceiverForMaskedLM"], **_LATENTS, "d_model": 16, "qk_channels": 8,
        "v_channels": 32, "max_position_embeddings": 512}),
    DemoModel("demo-classify-text", Task.TEXT_CLASSIFICATION, {
        "architectures": ["PerceiverForSequenceClassification"], **_LATENTS, "d_model": 16, "qk_channels": 8,
        "v_channels": 32, "max_position_embeddings": 512, "id2label": {"0": "negative", "1": "positive"}}),
    DemoModel("demo-vision-conv", Task.IMAGE_CLASSIFICATION, {
        "architectures": ["PerceiverForImageClassificationConvProcessing"], **_LATENTS,
        "image_size": 224, "id2label": DEMO_IMAGE_LABELS}, aliases=["conv"]),
    DemoModel("demo-vision-fourier", Task.IMAGE_CLASSIFICATION, {
        "architectures": ["PerceiverForImageClassificationFourier"], **_LATENTS,
        "image_size": 224, "id2label": DEMO_IMAGE_LABELS}, default=False, aliases=["fourier"]),
    DemoModel("demo-optical-flow", Task.OPTICAL_FLOW, {
        "architectures": ["PerceiverForOpticalFlow"], **_LATENTS, "d_model": 322, "train_size": [64, 64]}),
    DemoModel("demo-multimodal", Task.VIDEO_AUTOENCODING, {
        "architectures": ["PerceiverForMultimodalAutoencoding"], **_LATENTS, "d_model": 704, "num_frames": 2,
        "audio_samples_per_frame": 64, "samples_per_patch": 16, "output_shape": [1, 2, 16, 16],
        "output_num_channels": 32, "image_size": 16, "id2label": {str(i): f"action {i}" for i in range(5)}}),
)


def create_checkpoint(config: dict[str, Any], folder: Path, *, seed: int = 0) -> None:
    """A random checkpoint of `config` at `folder`, written atomically (tmp folder, then rename)."""
    import torch

    from model_core import from_config, save_pretrained

    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_pretrained(from_config(config, device="cpu", dtype=torch.float32, seed=seed), tmp)
        tmp.rename(folder)
    except OSError:
        if not (folder / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def demo_settings(settings: Settings) -> Settings:
    """`settings` serving the demo checkpoints (created under demo_dir if missing) instead of its models."""
    root = settings.server.demo_dir.expanduser() / VERSION
    models: dict[str, dict[str, Any]] = {}
    for demo in DEMO_MODELS:
        folder = root / demo.name
        if not (folder / "config.json").exists():
            log.info("demo: creating a random %s checkpoint at %s", demo.task.value, folder)
            try:
                create_checkpoint(demo.config, folder)
            except Exception as exc:  # a task the model library cannot build yet is left out, loudly
                log.warning("demo: skipping %s (%s): %s", demo.name, demo.task.value, exc)
                continue
        models[demo.name] = {"task": demo.task.value, "source": str(folder), "default": demo.default,
                             "aliases": demo.aliases, "random_weights": True}
    server = settings.server.model_dump(mode="json", exclude={"catalog"})
    return build_settings({"server": {**server, "catalog": False}, "models": models})
