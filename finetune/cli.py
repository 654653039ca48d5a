"""`perceiver-serve finetune`: the command line over `finetune.Options`; defaults are the Options' own."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.optim import DECAYS
from finetune.run import Options, finetune
from model_core import CheckpointError

DEFAULTS = Options(base="", train=Path(), out=Path())


def parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="perceiver-serve finetune",
        description=(
            "Fine-tune a PerceiverForSequenceClassification from a masked-LM (or classifier) checkpoint: "
            "stage 1 trains the classification decoder on the frozen encoder's latents, encoded once per "
            "example; --unfreeze adds stage 2, the whole model. Writes config.json, model.safetensors, "
            "report.json and report.txt to --out."
        ),
    )
    p.add_argument("--base", required=True, metavar="SOURCE", help="hub id or checkpoint folder")
    p.add_argument("--train", required=True, type=Path, metavar="FILE", help="JSONL or CSV with text and label")
    p.add_argument("--eval", type=Path, metavar="FILE", help="held-out set: per-epoch score, early stopping, report")
    p.add_argument("--out", required=True, type=Path, metavar="FOLDER", help="where the classifier is written")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--text-column", default=d.text_column, help="field or column of the text (default: %(default)s)")
    p.add_argument("--label-column", default=d.label_column, help="field or column of the label (default: %(default)s)")
    p.add_argument(
        "--max-length",
        type=int,
        metavar="BYTES",
        help="bytes a text keeps, longer ones cut (default: all the base takes)",
    )
    stage1 = p.add_argument_group("stage 1: frozen encoder")
    stage1.add_argument("--epochs", type=int, default=d.epochs, help="0 skips stage 1 (default: %(default)s)")
    stage1.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    stage1.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    stage1.add_argument(
        "--recompute-latents",
        dest="cache_latents",
        action="store_false",
        help="run the frozen encoder for every batch instead of caching its latents (slower; no cache memory)",
    )
    stage1.add_argument(
        "--cache-memory-mb", type=float, default=d.cache_memory_mb, help="latents kept in memory (default: %(default)s)"
    )
    stage1.add_argument("--cache-dir", type=Path, help="where latents past --cache-memory-mb go (default: temp)")
    stage2 = p.add_argument_group("stage 2: the whole model")
    stage2.add_argument("--unfreeze", action="store_true", help="run stage 2 after stage 1")
    stage2.add_argument("--unfreeze-epochs", type=int, default=d.unfreeze_epochs, help="(default: %(default)s)")
    stage2.add_argument("--unfreeze-batch-size", type=int, default=d.unfreeze_batch_size, help="(default: %(default)s)")
    stage2.add_argument("--unfreeze-lr", type=float, default=d.unfreeze_lr, help="(default: %(default)s)")
    both = p.add_argument_group("both stages")
    both.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW's (default: %(default)s)")
    both.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="(default: %(default)s)")
    both.add_argument("--decay", choices=DECAYS, default=d.decay, help="after warm-up (default: %(default)s)")
    both.add_argument(
        "--max-grad-norm", type=float, default=d.max_grad_norm, help="0: no clipping (default: %(default)s)"
    )
    both.add_argument("--patience", type=int, default=d.patience, help="0: no early stopping (default: %(default)s)")
    both.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    both.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    both.add_argument(
        "--encode-batch-size", type=int, default=d.encode_batch_size, help="encoder passes (default: %(default)s)"
    )
    both.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv: Sequence[str]) -> int:
    """0 on success; 2 for bad data or options, 1 when the base checkpoint cannot be used. Problems are one
    line each on stderr, never a traceback."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = finetune(Options(**vars(args)))
    except FinetuneError as exc:
        print(f"perceiver-serve finetune: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"perceiver-serve finetune: {exc}", file=sys.stderr)
        return 1
    print(f"accuracy {report.scores.accuracy:.4f}, macro-F1 {report.scores.macro_f1:.4f} ({report.scored_on} set)")
    return 0
