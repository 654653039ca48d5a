"""`finetune(options)`: labelled texts and a text checkpoint in; a PerceiverForSequenceClassification folder
out (config.json with the data's labels, model.safetensors, report.json, report.txt), which
`load_pretrained`, the server and transformers all load.

Everything that can be wrong with the data or the options is found before the weights are read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.classifier import base_config, load_classifier
from finetune.data import check_eval_labels, label_names, read_texts, tokenize
from finetune.errors import OptionsError
from finetune.metrics import scores
from finetune.optim import Decay
from finetune.recipe import Labelled, Setup, all_logits, frozen, full, stage
from finetune.report import DataSummary, Report, write_report
from finetune.runtime import Padder, Runtime
from finetune.stages import Hyper, StageResult, fit
from model_core import PerceiverConfig, save_pretrained
from model_core.checkpoint import CONFIG_FILE

log = logging.getLogger("finetune")
STAGE_1 = "stage 1 (frozen encoder)"
STAGE_2 = "stage 2 (unfrozen)"
SPECIAL_TOKENS = 2  # [CLS] and [SEP] around every text


@dataclass(frozen=True, kw_only=True)
class Options:
    """Every choice of a run; the defaults follow the perceiver-io IMDB recipe (decoder at 1e-3, the whole
    model at a learning rate two orders lower)."""

    base: str
    train: Path
    out: Path
    eval: Path | None = None
    text_column: str = "text"
    label_column: str = "label"
    max_length: int | None = None  # bytes a text keeps; None: as many as the base takes
    epochs: int = 10  # stage 1; 0 skips it
    batch_size: int = 32
    lr: float = 1e-3
    unfreeze: bool = False  # stage 2
    unfreeze_epochs: int = 3
    unfreeze_batch_size: int = 8
    unfreeze_lr: float = 1e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    decay: Decay = "cosine"
    max_grad_norm: float = 1.0
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    encode_batch_size: int = 16
    cache_latents: bool = True
    cache_memory_mb: float = 4096
    cache_dir: Path | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {"batch_size", "unfreeze_batch_size", "encode_batch_size", "unfreeze_epochs"}
        for name in sorted(positive | {"max_length"}):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionsError(f"{name} must be at least 1, not {value}")
        for name in ("epochs", "patience", "max_grad_norm", "weight_decay", "cache_memory_mb"):
            if getattr(self, name) < 0:
                raise OptionsError(f"{name} must not be negative, not {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise OptionsError(f"warmup_ratio must be in [0, 1), not {self.warmup_ratio}")
        if self.lr <= 0 or self.unfreeze_lr <= 0:
            raise OptionsError("learning rates must be positive")
        if self.epochs == 0 and not self.unfreeze:
            raise OptionsError("nothing to train: epochs is 0 and unfreeze is off")

    def hyper(self, *, unfrozen: bool) -> Hyper:
        """Stage 1's settings, or stage 2's (its own epochs, batch size and learning rate)."""
        hyper = Hyper(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            decay=self.decay,
            max_grad_norm=self.max_grad_norm,
            patience=self.patience,
        )
        if not unfrozen:
            return hyper
        return dataclasses.replace(
            hyper, epochs=self.unfreeze_epochs, batch_size=self.unfreeze_batch_size, lr=self.unfreeze_lr
        )


def _check_out(options: Options) -> None:
    if (options.out / CONFIG_FILE).exists() and not options.overwrite:
        raise OptionsError(f"{options.out} already holds a checkpoint; choose another --out or pass --overwrite")


def _max_bytes(options: Options, max_position_embeddings: int) -> int:
    limit = max_position_embeddings - SPECIAL_TOKENS
    if options.max_length is not None and options.max_length > limit:
        raise OptionsError(f"max_length {options.max_length} is more than the base takes ({limit} bytes)")
    return options.max_length or limit


@dataclass(frozen=True)
class Prepared:
    """The data, checked and tokenized, and what the base checkpoint's config says about it."""

    labels: list[str]
    base: PerceiverConfig
    max_bytes: int
    data: dict[str, Labelled]  # "train", and "eval" when given
    summaries: dict[str, DataSummary]


def prepare(options: Options) -> Prepared:
    """Read and check the data against the base's config (its weights are not read yet); truncated texts
    are warned about here, before any training."""
    _check_out(options)
    columns = dict(text_column=options.text_column, label_column=options.label_column)
    sets = {"train": read_texts(options.train, **columns)}
    if options.eval is not None:
        sets["eval"] = read_texts(options.eval, **columns)
    labels = label_names(sets["train"])
    if "eval" in sets:
        check_eval_labels(sets["eval"], labels)
    base = base_config(options.base)
    max_bytes = _max_bytes(options, base.max_position_embeddings)
    index = {name: i for i, name in enumerate(labels)}
    data, summaries = {}, {}
    for split, texts in sets.items():
        tokenized = tokenize(texts, max_bytes=max_bytes)
        if (warning := tokenized.warning(texts.path, max_bytes)) is not None:
            log.warning(warning)
        data[split] = Labelled(tokenized.ids, torch.tensor([index[label] for label in texts.labels]))
        summaries[split] = DataSummary(path=str(texts.path), examples=len(texts), truncated=len(tokenized.truncated))
    return Prepared(labels, base, max_bytes, data, summaries)


@dataclass(frozen=True)
class Trained:
    results: list[StageResult]
    latents: str  # how stage 1 got its latents
    encode_seconds: float
    predicted: torch.Tensor  # (N,) class indices of the scored split, at the kept weights


def train(setup: Setup, options: Options, *, scored: str) -> Trained:
    """Stage 1 (unless epochs is 0), then stage 2 with `unfreeze`; the latent cache lives only as long as
    stage 1 needs it (and its scores, when it is the last stage)."""
    generator = torch.Generator().manual_seed(options.seed)
    train_labels, eval_labels = setup.data["train"].labels, setup.data.get("eval")
    held_out = None if eval_labels is None else eval_labels.labels
    results, latents, encode_seconds, predicted = [], "-", 0.0, None
    if options.epochs:
        started = time.perf_counter()
        latents_from = frozen(
            setup, cache=options.cache_latents, memory_mb=options.cache_memory_mb, directory=options.cache_dir
        )
        with latents_from as (logits, latents):
            encode_seconds = time.perf_counter() - started
            first = stage(setup, STAGE_1, logits, hyper=options.hyper(unfrozen=False), decoder_only=True)
            results.append(fit(first, train_labels, held_out, generator=generator, progress=options.progress))
            if not options.unfreeze:
                predicted = all_logits(setup, logits, scored).argmax(dim=-1)
    if options.unfreeze:
        logits = full(setup)
        second = stage(setup, STAGE_2, logits, hyper=options.hyper(unfrozen=True), decoder_only=False)
        results.append(fit(second, train_labels, held_out, generator=generator, progress=options.progress))
        predicted = all_logits(setup, logits, scored).argmax(dim=-1)
    assert predicted is not None  # Options refuses a run with neither stage
    return Trained(results, latents, encode_seconds, predicted)


def finetune(options: Options) -> Report:
    """Fine-tune, save the classifier and its report in `options.out`, and return the report."""
    started = time.perf_counter()
    prepared = prepare(options)
    runtime = Runtime.pick(options.device)
    torch.manual_seed(options.seed)
    model = load_classifier(options.base, prepared.labels, seed=options.seed).to(runtime.device)
    padder = Padder(max_length=prepared.base.max_position_embeddings, device=runtime.device)
    setup = Setup(model, prepared.data, runtime, padder, options.encode_batch_size, options.progress)
    scored = "eval" if "eval" in prepared.data else "train"
    trained = train(setup, options, scored=scored)

    model.requires_grad_(False)
    save_pretrained(model, options.out)
    report = Report(
        base=options.base,
        base_architecture=prepared.base.architecture.value,
        labels=prepared.labels,
        train=prepared.summaries["train"],
        eval=prepared.summaries.get("eval"),
        max_length=prepared.max_bytes,
        device=str(runtime.device),
        latents=trained.latents,
        encode_seconds=trained.encode_seconds,
        stages=trained.results,
        scores=scores(trained.predicted, prepared.data[scored].labels, prepared.labels),
        seconds=time.perf_counter() - started,
    )
    text = write_report(options.out, report)
    log.info("wrote %s\n%s", options.out, text)
    return report
