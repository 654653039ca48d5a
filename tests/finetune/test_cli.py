"""`perceiver-serve finetune`: problems found before training are one line each and exit 2, a base that
cannot be used exits 1; nothing is written then."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.cli import main
from tests.finetune.synthetic import marker_texts, random_base, write_jsonl


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_base(tmp_path_factory.mktemp("base"), "language-perceiver-tiny")


def run(base: Path, tmp_path: Path, *args: str) -> int:
    return main(["--base", str(base), "--out", str(tmp_path / "out"), "--no-progress", *args])


def test_bad_data_exits_2_naming_each_line_before_anything_is_written(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", marker_texts(4, seed=0))
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text('{"text": "x", "label": "negative"}\n{"text": "y", "label": "neutral"}\n{"text": "z"}\n')
    assert run(base, tmp_path, "--train", str(train), "--eval", str(evaluation)) == 2
    err = capsys.readouterr().err
    assert f"{evaluation}:3: no 'label' field" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    evaluation.write_text('{"text": "y", "label": "neutral"}\n')
    assert run(base, tmp_path, "--train", str(train), "--eval", str(evaluation)) == 2
    assert f"{evaluation}:1: label 'neutral' is not in the training data" in capsys.readouterr().err


def test_bad_options_exit_2(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = str(write_jsonl(tmp_path / "train.jsonl", marker_texts(4, seed=0)))
    assert run(base, tmp_path, "--train", train, "--max-length", "300") == 2
    assert "max_length 300 is more than the base takes (254 bytes)" in capsys.readouterr().err
    assert run(base, tmp_path, "--train", train, "--epochs", "0") == 2
    assert "nothing to train" in capsys.readouterr().err
    assert run(base, tmp_path, "--train", train, "--device", "tpu:7") == 2
    assert "device 'tpu:7'" in capsys.readouterr().err


def test_a_missing_base_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = str(write_jsonl(tmp_path / "train.jsonl", marker_texts(4, seed=0)))
    assert run(tmp_path / "nowhere", tmp_path, "--train", train) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_run_writes_the_classifier_and_refuses_to_overwrite_it(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = str(write_jsonl(tmp_path / "train.jsonl", marker_texts(16, seed=0)))
    assert run(base, tmp_path, "--train", train, "--epochs", "1") == 0
    assert "(train set)" in capsys.readouterr().out
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "report.txt").is_file()
    assert run(base, tmp_path, "--train", train, "--epochs", "1") == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert run(base, tmp_path, "--train", train, "--epochs", "1", "--overwrite") == 0
