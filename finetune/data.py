"""Labelled texts from JSONL or CSV, checked before any weight is loaded.

Every problem a file has is collected and reported at once, each naming its file and line, so
a bad file costs one run, not one run per mistake. Label names come from the data: the
classifier's `id2label` is the sorted set of training labels (numerically sorted when every
label is an integer).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from finetune.errors import MAX_LISTED, DataError
from model_core.tokenizer import CLS_ID, SEP_ID, ByteTokenizer

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    line: int  # 1-based, where the record starts


@dataclass(frozen=True)
class TextSet:
    path: Path
    examples: tuple[Example, ...]

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.examples]


def read_texts(path: Path, *, text_column: str = "text", label_column: str = "label") -> TextSet:
    """Every example of a JSONL (one object a line; blank lines skipped) or CSV/TSV file (a header row)."""
    suffix = path.suffix.lower()
    if suffix not in (*JSONL_SUFFIXES, *CSV_DELIMITERS):
        raise DataError([f"{path}: unknown format {suffix or '(no suffix)'!r}; expected .jsonl or .csv (or .tsv)"])
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError([f"{path}:{line}: not UTF-8 ({exc.reason} at byte {exc.start})"]) from exc
    if suffix in CSV_DELIMITERS:
        examples, problems = _read_csv(path, content, CSV_DELIMITERS[suffix], text_column, label_column)
    else:
        examples, problems = _read_jsonl(path, content, text_column, label_column)
    if not examples and not problems:
        problems = [f"{path}: no examples (the file is empty{' but for its header' if content.strip() else ''})"]
    if problems:
        raise DataError(problems)
    return TextSet(path, tuple(examples))


def _label(value: object) -> str | None:
    """A label as its name: strings as they are, integers in decimal; anything else is not a label."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _record(
    path: Path, line: int, fields: dict[str, object], text_column: str, label_column: str
) -> tuple[Example | None, list[str]]:
    where = f"{path}:{line}"
    problems = [f"{where}: no {name!r} field" for name in (text_column, label_column) if fields.get(name) is None]
    if problems:
        return None, problems
    text, label = fields[text_column], _label(fields[label_column])
    if not isinstance(text, str):
        problems.append(f"{where}: {text_column!r} is {type(text).__name__}, not a string")
    if label is None:
        problems.append(f"{where}: {label_column!r} is {fields[label_column]!r}; a label is a non-empty string or int")
    if problems or not isinstance(text, str) or label is None:
        return None, problems
    return Example(text=text, label=label, line=line), []


def _read_jsonl(path: Path, content: str, text_column: str, label_column: str) -> tuple[list[Example], list[str]]:
    if content.lstrip().startswith("["):
        return [], [f"{path}:1: a JSON array; write one object a line (JSON Lines)"]
    examples, problems = [], []
    for number, line in enumerate(content.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            problems.append(
                f"{where}: a {type(record).__name__}, not an object with {text_column!r} and {label_column!r}"
            )
            continue
        example, found = _record(path, number, record, text_column, label_column)
        problems += found
        if example is not None:
            examples.append(example)
    return examples, problems


def _read_csv(
    path: Path, content: str, delimiter: str, text_column: str, label_column: str
) -> tuple[list[Example], list[str]]:
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter)
    columns = reader.fieldnames or []
    missing = [name for name in (text_column, label_column) if name not in columns]
    if columns and missing:
        names = ", ".join(repr(c) for c in columns)
        return [], [f"{path}:1: no {name!r} column in the header (columns: {names})" for name in missing]
    examples, problems, start = [], [], reader.line_num + 1
    try:
        for row in reader:
            fields: dict[str, object] = {k: v for k, v in row.items() if k is not None}  # None: extra cells
            example, found = _record(path, start, fields, text_column, label_column)
            problems += found
            if example is not None:
                examples.append(example)
            start = reader.line_num + 1
    except csv.Error as exc:
        problems.append(f"{path}:{reader.line_num}: not CSV ({exc})")
    return examples, problems


def label_names(train: TextSet) -> list[str]:
    """The classifier's classes, by index: the training labels sorted (as numbers when all are integers)."""
    names = set(train.labels)
    if len(names) < 2:
        found = ", ".join(repr(n) for n in sorted(names))
        raise DataError([f"{train.path}: one label only ({found}); a classifier needs at least two"])
    numeric = all(n.lstrip("-").isdigit() for n in names)
    return sorted(names, key=int) if numeric else sorted(names)


def check_eval_labels(evaluation: TextSet, labels: Sequence[str]) -> None:
    """Refuse eval examples whose label the training data never shows: the classifier could not predict them."""
    known = set(labels)
    problems = [
        f"{evaluation.path}:{e.line}: label {e.label!r} is not in the training data (labels: {', '.join(labels)})"
        for e in evaluation.examples
        if e.label not in known
    ]
    if problems:
        raise DataError(problems)


@dataclass(frozen=True)
class Tokenized:
    """Token ids per example ([CLS] bytes [SEP]) and the lines whose text was cut to the length limit."""

    ids: list[list[int]]
    truncated: list[int]

    def warning(self, path: Path, max_bytes: int) -> str | None:
        """One line naming the truncated examples' lines, or None when none was."""
        if not self.truncated:
            return None
        lines = ", ".join(str(n) for n in self.truncated[:MAX_LISTED])
        more = f" and {len(self.truncated) - MAX_LISTED} more" if len(self.truncated) > MAX_LISTED else ""
        return (
            f"{path}: {len(self.truncated)} text(s) longer than {max_bytes} bytes cut to the first {max_bytes} "
            f"(lines {lines}{more})"
        )


def tokenize(texts: TextSet, *, max_bytes: int) -> Tokenized:
    """Byte tokens as the server makes them; a text over `max_bytes` tokens keeps its first `max_bytes`
    (transformers' truncation), its line recorded so the caller can say so."""
    tokenizer = ByteTokenizer()
    ids, truncated = [], []
    for example in texts.examples:
        body = tokenizer.encode(example.text, add_special_tokens=False)
        if len(body) > max_bytes:
            truncated.append(example.line)
            body = body[:max_bytes]
        ids.append([CLS_ID, *body, SEP_ID])
    return Tokenized(ids, truncated)
