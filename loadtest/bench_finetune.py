"""Stage-1 fine-tuning cost: the frozen encoder's latents cached once per example, against the encoder run
again for every batch of every epoch, at the published language-perceiver config (random weights).

    python -m loadtest.bench_finetune                                   # 200 texts, 3 epochs (~25 min, 2 cores)
    python -m loadtest.bench_finetune --examples 400 --epochs 10 --text-bytes 1000
    python -m loadtest.bench_finetune --preset language-perceiver-small --examples 64   # a quick look

Both modes run the code `perceiver-serve finetune` runs (`finetune.recipe.frozen`, `finetune.stages.fit`)
from the same seeded classifier on the same texts, each in its own worker process, one after the other.
Times are per 1,000 training examples, scaled from --examples; "at N epochs" rows are derived from the
measured parts (one encoding pass, and the per-epoch cost of each mode).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from loadtest.workers import machine, make_checkpoint, spawn
from model_core.presets import preset_config

LABELS = ["negative", "positive"]
SENTENCE = "the film was long and its story slow but the actors were good and the music fine at times"
WORDS = SENTENCE.split()
MODES = ("cached", "recomputed")


def texts(count: int, text_bytes: int, *, seed: int = 0) -> list[str]:
    """Texts of text_bytes/2 to text_bytes bytes of plain words (lengths mixed, as a real set's are)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        size, words = rng.randint(text_bytes // 2, text_bytes), []
        while sum(len(w) + 1 for w in words) < size:
            words.append(rng.choice(WORDS))
        out.append(" ".join(words)[:size])
    return out


def _worker(mode: str, folder: str, examples: int, epochs: int, text_bytes: int, batch_size: int) -> dict[str, Any]:
    from finetune.classifier import load_classifier
    from finetune.latents import encode_rows
    from finetune.recipe import Labelled, Setup, frozen, stage
    from finetune.runtime import Padder, Runtime
    from finetune.stages import Hyper, fit
    from model_core.tokenizer import ByteTokenizer

    tokenizer, runtime = ByteTokenizer(), Runtime.pick("cpu")
    model = load_classifier(folder, LABELS, seed=0)
    fits = model.config.max_position_embeddings - 2  # bytes a text keeps between [CLS] and [SEP]
    rows = [tokenizer.encode(t) for t in texts(examples, min(text_bytes, fits))]
    labels = torch.tensor([i % 2 for i in range(examples)])
    padder = Padder(max_length=model.config.max_position_embeddings, device=runtime.device)
    setup = Setup(model, {"train": Labelled(rows, labels)}, runtime, padder, batch_size)
    encode_rows(model, rows[:2], padder, runtime)  # warm-up
    started = time.perf_counter()
    with frozen(setup, cache=mode == "cached", memory_mb=1e9) as (logits, _):
        encoded = time.perf_counter() - started
        hyper = Hyper(epochs=epochs, batch_size=32, lr=1e-3, patience=0)
        result = fit(
            stage(setup, "stage 1", logits, hyper=hyper, decoder_only=True),
            labels,
            None,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
    total = time.perf_counter() - started
    return dict(
        encode_s=encoded,
        epoch_s=result.train_seconds / epochs,
        total_s=total,
        losses=[r.train_loss for r in result.history[1:]],
        tokens=sum(len(r) for r in rows) / examples,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="language-perceiver", help="the base masked LM's config (model_core preset)")
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--epochs", type=int, default=3, help="stage-1 epochs measured")
    p.add_argument("--at-epochs", default="1,10,30", help="epoch counts the per-1,000 times are derived for")
    p.add_argument("--text-bytes", type=int, default=400, help="texts of half this to this many bytes")
    p.add_argument("--encode-batch-size", type=int, default=16)
    p.add_argument("--checkpoints", help="folder for the random checkpoint (default: temp)")
    p.add_argument("--out", default="bench-results/finetune.json")
    p.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        mode, folder, *numbers = a.worker
        print(json.dumps(_worker(mode, folder, *(int(n) for n in numbers))))
        return
    root = Path(a.checkpoints or tempfile.mkdtemp(prefix="perceiver-bench-"))
    folder = make_checkpoint(preset_config(a.preset), root / a.preset)
    args = [folder, str(a.examples), str(a.epochs), str(a.text_bytes), str(a.encode_batch_size)]
    runs = {mode: spawn("loadtest.bench_finetune", [mode, *args]) for mode in MODES}
    failed = {mode: r["error"] for mode, r in runs.items() if "error" in r}
    if failed:
        raise SystemExit(f"bench_finetune: a worker failed: {failed}")
    per_1000 = 1000 / a.examples
    cached, recomputed = runs["cached"], runs["recomputed"]
    rows = []
    for epochs in [a.epochs, *(int(e) for e in a.at_epochs.split(",") if int(e) != a.epochs)]:
        ours = (cached["encode_s"] + epochs * cached["epoch_s"]) * per_1000
        theirs = epochs * recomputed["epoch_s"] * per_1000
        rows.append(
            dict(epochs=epochs, measured=epochs == a.epochs, cached_s=ours, recomputed_s=theirs, ratio=theirs / ours)
        )
    same = max(abs(x - y) for x, y in zip(cached["losses"], recomputed["losses"], strict=True))
    print(f"{a.preset}, {a.examples} texts of {cached['tokens']:.0f} tokens on average, per 1,000 examples:")
    print(
        f"  encoding once: {cached['encode_s'] * per_1000:.1f} s; a decoder epoch on cached latents: "
        f"{cached['epoch_s'] * per_1000:.2f} s; an epoch re-encoding: {recomputed['epoch_s'] * per_1000:.1f} s"
    )
    for row in rows:
        kind = "measured" if row["measured"] else "derived"
        print(
            f"  {row['epochs']:3d} epochs ({kind}): cached {row['cached_s']:8.1f} s, recomputed "
            f"{row['recomputed_s']:8.1f} s, x{row['ratio']:.1f}"
        )
    print(f"  largest difference between the two modes' epoch losses: {same:.1e}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    result = dict(machine=dict(machine(), cpu=cpu_name()), args=vars(a), runs=runs, rows=rows, loss_difference=same)
    Path(a.out).write_text(json.dumps(result, indent=2))


def cpu_name() -> str:
    """The CPU's model name (benchmarks differ between CPUs with and without AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
