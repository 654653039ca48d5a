"""The two stages of the perceiver-io recipe as `Stage`s over one classifier:

1. the encoder frozen, the classification decoder trained on latents encoded once per example
   (`cached`), or re-encoded every time they are needed (`recomputed`: the baseline the cache is
   measured against, and the way to train on more examples than the cache could hold);
2. every parameter trained, the whole model run per batch (`full`), under bfloat16 autocast on CUDA.

Each way of computing logits is a function (split, example indices) -> logits (B, C), so the stage's
training batches, its per-epoch evaluation and the final scores all go through the same one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.classifier import decode_latents
from finetune.latents import LatentCache, encode_all, encode_rows
from finetune.runtime import Padder, Runtime
from finetune.stages import Hyper, Stage
from model_core import PerceiverForTask

Logits = Callable[[str, torch.Tensor], torch.Tensor]  # (split, indices (B,)) -> logits (B, C)


@dataclass(frozen=True)
class Labelled:
    rows: list[list[int]]  # token ids per example
    labels: torch.Tensor  # (N,) class indices


@dataclass(frozen=True)
class Setup:
    """What every way of computing logits shares."""

    model: PerceiverForTask
    data: dict[str, Labelled]  # "train", and "eval" when there is a held-out set
    runtime: Runtime
    padder: Padder
    batch_size: int  # of encoder passes that fill a cache or score a whole split
    progress: bool = False

    def rows(self, split: str, indices: torch.Tensor) -> list[list[int]]:
        return [self.data[split].rows[i] for i in indices.tolist()]


def cached(setup: Setup, caches: Mapping[str, LatentCache]) -> Logits:
    """Stage 1's logits from latents encoded once per example (`caches`: one filled cache per split)."""

    def logits(split: str, indices: torch.Tensor) -> torch.Tensor:
        with setup.runtime.autocast():
            return decode_latents(setup.model, caches[split][indices].to(setup.runtime.device))

    return logits


def recomputed(setup: Setup) -> Logits:
    """Stage 1's logits with the frozen encoder run again for every batch, every epoch."""

    def logits(split: str, indices: torch.Tensor) -> torch.Tensor:
        latents = encode_rows(setup.model, setup.rows(split, indices), setup.padder, setup.runtime)
        with setup.runtime.autocast():
            return decode_latents(setup.model, latents)

    return logits


def full(setup: Setup) -> Logits:
    """Stage 2's logits: the whole model, with gradients through the encoder."""

    def logits(split: str, indices: torch.Tensor) -> torch.Tensor:
        input_ids, mask = setup.padder(setup.rows(split, indices))
        with setup.runtime.autocast():
            out = setup.model(input_ids, attention_mask=mask).logits
        assert isinstance(out, torch.Tensor)  # a sequence classifier's logits are one tensor
        return out

    return logits


def all_logits(setup: Setup, logits: Logits, split: str) -> torch.Tensor:
    """Logits (N, C) of every example of a split, in order, without gradients."""
    with torch.no_grad():
        chunks = torch.arange(len(setup.data[split].rows)).split(setup.batch_size)
        return torch.cat([logits(split, indices).float().cpu() for indices in chunks])


def stage(setup: Setup, name: str, logits: Logits, *, hyper: Hyper, decoder_only: bool) -> Stage:
    """A stage training the classification decoder (stage 1) or every parameter (stage 2) through `logits`."""
    prefix = "perceiver.decoder." if decoder_only else ""
    params = {n: p for n, p in setup.model.named_parameters() if n.startswith(prefix)}
    held_out = "eval" in setup.data
    return Stage(
        name=name,
        module=setup.model,
        params=params,
        train_logits=lambda indices: logits("train", indices),
        eval_logits=(lambda: all_logits(setup, logits, "eval")) if held_out else None,
        hyper=hyper,
    )


@contextlib.contextmanager
def frozen(
    setup: Setup, *, cache: bool, memory_mb: float, directory: Path | None = None
) -> Iterator[tuple[Logits, str]]:
    """Stage 1's logits and how they get their latents ("cached in memory", "cached on disk", "recomputed").

    With `cache`, every split is encoded on entry, its latents kept in memory up to `memory_mb` in all
    and past it in files under `directory`, removed on exit.
    """
    if not cache:
        yield recomputed(setup), "recomputed"
        return
    config = setup.model.config
    with contextlib.ExitStack() as stack:
        caches, room = {}, memory_mb
        for split, labelled in setup.data.items():
            size = (len(labelled.rows), config.num_latents, config.d_latents)
            caches[split] = stack.enter_context(LatentCache(*size, memory_mb=room, directory=directory))
            room -= 0 if caches[split].on_disk else caches[split].megabytes
            batches = encode_all(
                setup.model,
                labelled.rows,
                padder=setup.padder,
                runtime=setup.runtime,
                batch_size=setup.batch_size,
                desc=f"encoding {split}",
                progress=setup.progress,
            )
            caches[split].fill(batches)
        yield cached(setup, caches), "cached on disk" if any(c.on_disk for c in caches.values()) else "cached in memory"
