"""The record of a fine-tuning run, written next to the checkpoint: report.json for tools, report.txt for
people (the same text the command prints at the end)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from finetune.metrics import Scores, scores_text
from finetune.stages import EpochRecord, StageResult

JSON_FILE = "report.json"
TEXT_FILE = "report.txt"


@dataclass(frozen=True, kw_only=True)
class DataSummary:
    """One data file as the run read it."""

    path: str
    examples: int
    truncated: int  # texts cut to the length limit

    def line(self, name: str, max_length: int) -> str:
        cut = f", {self.truncated} cut to {max_length} bytes" if self.truncated else ""
        return f"{name}: {self.path}, {self.examples} examples{cut}"


@dataclass(frozen=True)
class Report:
    """What a run did and how good its classifier is; report.json is this, as JSON."""

    base: str
    base_architecture: str
    labels: list[str]
    train: DataSummary
    eval: DataSummary | None
    max_length: int  # bytes a text keeps
    device: str
    latents: str  # how stage 1 got its latents: "cached in memory", "cached on disk", "recomputed", "-"
    encode_seconds: float  # filling the latent cache
    stages: list[StageResult]  # each with its per-epoch history
    scores: Scores  # on the eval set, or on the training set when there is none
    seconds: float  # the whole run

    @property
    def history(self) -> list[EpochRecord]:
        """Every stage's epochs, in order."""
        return [record for stage in self.stages for record in stage.history]

    @property
    def scored_on(self) -> str:
        return "eval" if self.eval is not None else "train"


def report_text(report: Report) -> str:
    lines = [
        f"PerceiverForSequenceClassification from {report.base} ({report.base_architecture})",
        f"labels: {', '.join(report.labels)}",
        report.train.line("train", report.max_length),
        *([report.eval.line("eval", report.max_length)] if report.eval else []),
        f"device: {report.device}; stage 1 latents: {report.latents}"
        + (f" (encoded in {report.encode_seconds:.1f} s)" if report.encode_seconds else ""),
    ]
    for s in report.stages:
        stop = ", stopped early" if s.stopped_early else ""
        lines.append(f"{s.name}: {s.epochs_run} epochs in {s.train_seconds:.1f} s, best epoch {s.best_epoch}{stop}")
    scores = report.scores
    where = (
        f"the eval set ({report.eval.path})" if report.eval else "the TRAINING set (no --eval: not a held-out score)"
    )
    lines += [
        "",
        f"scored on {where}: accuracy {scores.accuracy:.4f}, macro-F1 {scores.macro_f1:.4f}",
        "",
        scores_text(scores),
    ]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, report: Report) -> str:
    """Write report.json and report.txt into `folder`; returns the text."""
    text = report_text(report)
    (folder / TEXT_FILE).write_text(text)
    payload = {**dataclasses.asdict(report), "scored_on": report.scored_on}
    (folder / JSON_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    return text
