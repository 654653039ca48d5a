"""Encoding for the latent cache: order and padding do not change an example's latents; a cache past its
memory budget lives in a file that goes away."""

from __future__ import annotations

from pathlib import Path

import torch

from finetune.classifier import load_classifier
from finetune.latents import LatentCache, encode_all, encode_rows
from finetune.runtime import Padder, Runtime
from model_core.tokenizer import ByteTokenizer
from tests.finetune.synthetic import random_base


def test_cached_latents_are_each_examples_own(tmp_path: Path) -> None:
    model = load_classifier(random_base(tmp_path / "base", "language-perceiver-tiny"), ["a", "b"]).eval()
    runtime = Runtime.pick("cpu")
    padder = Padder(max_length=model.config.max_position_embeddings, device=runtime.device)
    rows = [ByteTokenizer().encode("x" * n) for n in (40, 3, 17, 90, 8)]
    with LatentCache(len(rows), 8, 32, memory_mb=1) as cache:
        cache.fill(encode_all(model, rows, padder=padder, runtime=runtime, batch_size=2, desc="", progress=False))
        for i, row in enumerate(rows):
            alone = encode_rows(model, [row], padder, runtime)[0]
            assert torch.allclose(cache[torch.tensor([i])][0], alone, atol=1e-5)


def test_a_cache_past_its_budget_is_a_file_removed_on_close(tmp_path: Path) -> None:
    values = torch.randn(6, 4, 8)
    with LatentCache(6, 4, 8, memory_mb=1) as memory:
        assert not memory.on_disk
    disk = LatentCache(6, 4, 8, memory_mb=0, directory=tmp_path)
    assert disk.on_disk and [p.name for p in tmp_path.glob("perceiver-latents-*/*")] == ["latents.f32"]
    disk.fill(iter([([4, 0, 2], values[[4, 0, 2]]), ([1, 3, 5], values[[1, 3, 5]])]))
    assert torch.equal(disk[torch.tensor([5, 0])], values[[5, 0]]) and disk.megabytes == 6 * 4 * 8 * 4 / 2**20
    disk.close()
    assert list(tmp_path.iterdir()) == []
