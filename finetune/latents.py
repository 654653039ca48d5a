"""Stage 1's economy: with the encoder frozen, an example's latents never change, so the encoder (nearly
all of the model's compute) runs once per example and the decoder trains on what it left behind.

An example's latents are num_latents x d_latents floats: 32 KiB for a small model, 1.25 MiB for the
published language-perceiver (256 x 1280), so a large training set's cache goes to a memory-mapped
temporary file past a memory budget.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import torch
from tqdm import tqdm

from finetune.runtime import Padder, Runtime
from model_core import PerceiverForTask


def encode_rows(
    model: PerceiverForTask, rows: Sequence[Sequence[int]], padder: Padder, runtime: Runtime
) -> torch.Tensor:
    """The encoder's latents (B, L, D), float32, for token rows, without gradients."""
    input_ids, mask = padder(rows)
    with torch.no_grad(), runtime.autocast():
        return model.encode(input_ids, mask).latents.float()


def encode_all(
    model: PerceiverForTask,
    rows: Sequence[Sequence[int]],
    *,
    padder: Padder,
    runtime: Runtime,
    batch_size: int,
    desc: str,
    progress: bool,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(example indices, their latents) for every row, shortest rows first, so a batch's rows share a length
    bucket and little padding is encoded."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    with tqdm(total=len(rows), desc=desc, unit="text", disable=not progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            yield chunk, encode_rows(model, [rows[i] for i in chunk], padder, runtime)
            bar.update(len(chunk))


class LatentCache:
    """Latents (N, L, D) float32 on the CPU, row i for example i: in memory up to `memory_mb`, past it in a
    memory-mapped file under `directory` (the system's temporary folder by default), removed on close."""

    def __init__(
        self, count: int, num_latents: int, d_latents: int, *, memory_mb: float, directory: Path | None = None
    ) -> None:
        shape = (count, num_latents, d_latents)
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        if math.prod(shape) * 4 <= memory_mb * 2**20:
            self.latents = torch.empty(shape)
        else:
            self._folder = tempfile.TemporaryDirectory(prefix="perceiver-latents-", dir=directory)
            path = Path(self._folder.name) / "latents.f32"
            flat = torch.from_file(str(path), shared=True, size=math.prod(shape), dtype=torch.float32)
            self.latents = flat.view(shape)

    @property
    def on_disk(self) -> bool:
        return self._folder is not None

    @property
    def megabytes(self) -> float:
        return self.latents.numel() * 4 / 2**20

    def fill(self, batches: Iterator[tuple[list[int], torch.Tensor]]) -> LatentCache:
        for indices, latents in batches:
            self.latents[torch.tensor(indices)] = latents.cpu()
        return self

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.latents[indices]  # (B, L, D), a copy

    def close(self) -> None:
        self.latents = torch.empty(0)  # drop the mapping before its file goes
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def __enter__(self) -> LatentCache:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
