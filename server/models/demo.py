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

from model_core.presets import preset_config
from server.models.catalog import catalog_models
from server.settings import Settings, Task, build_settings

log = logging.getLogger(__name__)

VERSION = "v2"  # bump when the models below change, so stale demo folders are not reused
DEMO_IMAGE_LABELS = {
    str(i): name
    for i, name in enumerate(
        ["tabby cat", "golden retriever", "espresso", "volcano", "lighthouse", "sports car", "macaw", "pizza"]
    )
}


@dataclass(frozen=True)
class DemoModel:
    name: str
    task: Task
    config: dict[str, Any]
    default: bool = True
    aliases: list[str] = field(default_factory=list)


# Named as the catalog's models (server/models/catalog.py), aliases included, so that every documented request
# (`?model=fourier`, `/v2/models/language-perceiver`...) works against the demo as written; the demo-* names of
# earlier versions stay as aliases. There is no catalog text classifier: the demo's has its own name.
DEMO_MODELS: tuple[DemoModel, ...] = (  # model_core presets, with labels to show
    DemoModel(
        "language-perceiver", Task.FILL_MASK, preset_config("language-perceiver-demo"), aliases=["demo-fill-mask"]
    ),
    DemoModel(
        "demo-classify-text",
        Task.TEXT_CLASSIFICATION,
        preset_config("language-perceiver-classifier-demo", id2label={"0": "negative", "1": "positive"}),
    ),
    DemoModel(
        "vision-perceiver-conv",
        Task.IMAGE_CLASSIFICATION,
        preset_config("vision-perceiver-conv-tiny", id2label=DEMO_IMAGE_LABELS),
        aliases=["conv", "demo-vision-conv"],
    ),
    DemoModel(
        "vision-perceiver-learned",
        Task.IMAGE_CLASSIFICATION,
        preset_config("vision-perceiver-learned-tiny", id2label=DEMO_IMAGE_LABELS),
        default=False,
        aliases=["learned"],
    ),
    DemoModel(
        "vision-perceiver-fourier",
        Task.IMAGE_CLASSIFICATION,
        preset_config("vision-perceiver-fourier-tiny", id2label=DEMO_IMAGE_LABELS),
        default=False,
        aliases=["fourier", "demo-vision-fourier"],
    ),
    DemoModel(
        "optical-flow-perceiver",
        Task.OPTICAL_FLOW,
        preset_config("optical-flow-perceiver-demo"),
        aliases=["demo-optical-flow"],
    ),
    DemoModel(
        "multimodal-perceiver",
        Task.VIDEO_AUTOENCODING,
        preset_config("multimodal-perceiver-demo", id2label={str(i): f"action {i}" for i in range(5)}),
        aliases=["demo-multimodal"],
    ),
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
        models[demo.name] = {
            "task": demo.task.value,
            "source": str(folder),
            "default": demo.default,
            "aliases": demo.aliases,
            "random_weights": True,
        }
        timeout = catalog_models().get(demo.name, {}).get("request_timeout_s")
        if timeout is not None:  # the catalog model's deadline: the demo's tiny tiles add up to as many seconds
            models[demo.name]["request_timeout_s"] = timeout
    # Python mode: SecretStr values (API keys) go through as they are; JSON mode would mask them as "**********".
    server = settings.server.model_dump(exclude={"catalog"})
    return build_settings({"server": {**server, "catalog": False}, "models": models})
