"""The built-in catalog: the public DeepMind Perceiver IO checkpoints, as data.

Served when the configuration names no models of its own (or sets `[server] catalog = true`).
Every entry is loaded on first use, by hub id, from the Hugging Face cache or the hub.
"""

from __future__ import annotations

from typing import Any

CATALOG: tuple[dict[str, Any], ...] = (
    {"name": "language-perceiver", "task": "fill-mask", "source": "deepmind/language-perceiver", "default": True},
    {
        "name": "vision-perceiver-conv",
        "task": "image-classification",
        "source": "deepmind/vision-perceiver-conv",
        "default": True,
        "aliases": ["conv"],
    },
    {
        "name": "vision-perceiver-learned",
        "task": "image-classification",
        "source": "deepmind/vision-perceiver-learned",
        "aliases": ["learned"],
    },
    {
        "name": "vision-perceiver-fourier",
        "task": "image-classification",
        "source": "deepmind/vision-perceiver-fourier",
        "aliases": ["fourier"],
    },
    {
        "name": "optical-flow-perceiver",
        "task": "optical-flow",
        "source": "deepmind/optical-flow-perceiver",
        "default": True,
        "max_batch_size": 4,
        # A 436x1024 pair is 6 tiles: ~96 s on 2 CPU cores, ~180 s with a second request beside it (BENCHMARKS.md).
        "request_timeout_s": {"cpu": 300.0, "cuda": 60.0},
    },
    {
        "name": "multimodal-perceiver",
        "task": "video-autoencoding",
        "source": "deepmind/multimodal-perceiver",
        "default": True,
        "max_batch_size": 1,
        # A 16-frame reconstruction: ~50 s on 2 CPU cores, ~80 s with a second beside it; a longer clip, longer.
        "request_timeout_s": {"cpu": 600.0, "cuda": 120.0},
    },
)


def catalog_models() -> dict[str, dict[str, Any]]:
    """Catalog entries keyed by name, in the shape of a `[models.NAME]` table."""
    return {entry["name"]: {k: v for k, v in entry.items() if k != "name"} for entry in CATALOG}
