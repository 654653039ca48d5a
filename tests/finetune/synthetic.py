"""A labelled text task a small random masked LM can learn with its encoder frozen: a few filler words
around one of two marker words, the marker deciding the label. A random encoder's latents are close to
a pooled summary of the bytes, so the marker must be a good share of them: 2-8 short filler words."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from model_core import from_config, preset_config, save_pretrained

COMMON_WORDS = (
    "the a of and to in is it that was for on are with as his they be at one have this from by hot word but "
    "what some we can out other were all there when up use your how said an each she"
)
FILLER = COMMON_WORDS.split()
MARKERS = {"negative": "terrible", "positive": "excellent"}


def marker_texts(count: int, *, seed: int) -> list[dict[str, Any]]:
    """`count` texts of 2-8 filler words with one marker word at a random place; labels alternate, so a set
    of even size is balanced."""
    rng = random.Random(seed)
    names = sorted(MARKERS)
    rows = []
    for i in range(count):
        label = names[i % 2]
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 8))]
        words.insert(rng.randint(0, len(words)), MARKERS[label])
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def random_base(folder: Path, preset: str = "language-perceiver-small", *, seed: int = 0) -> Path:
    """A masked LM with random weights (model_core's init, seeded), saved as a checkpoint folder."""
    return save_pretrained(from_config(preset_config(preset), seed=seed), folder)
