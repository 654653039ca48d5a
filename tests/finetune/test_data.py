"""Reading labelled texts: both formats, and every kind of bad data refused with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.data import DataError, check_eval_labels, label_names, read_texts, tokenize
from model_core.tokenizer import CLS_ID, SEP_ID, ByteTokenizer


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def problems(path: Path, **columns: str) -> list[str]:
    with pytest.raises(DataError) as info:
        read_texts(path, **columns)
    return info.value.problems


def test_jsonl_and_csv_give_the_same_examples(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "a.jsonl", '{"text": "good, really", "label": "pos"}\n\n{"text": "bad", "label": "neg"}\n')
    csv = write(tmp_path / "a.csv", 'label,text\npos,"good, really"\nneg,bad\n')
    tsv = write(tmp_path / "a.tsv", "text\tlabel\ngood, really\tpos\nbad\tneg\n")
    read = [read_texts(p) for p in (jsonl, csv, tsv)]
    assert [[(e.text, e.label) for e in r.examples] for r in read] == [[("good, really", "pos"), ("bad", "neg")]] * 3
    assert [e.line for e in read[0].examples] == [1, 3]  # blank lines skipped, numbering kept
    assert [e.line for e in read[1].examples] == [2, 3]  # the header is line 1


def test_lines_end_at_newlines_only_and_arrays_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"text": "one\u2028line", "label": "x"}\r\n{"text": "b", "label": "y"}\n')
    assert [(e.text, e.line) for e in read_texts(path).examples] == [("one\u2028line", 1), ("b", 2)]
    array = write(tmp_path / "a.json", '[{"text": "a", "label": "x"}]')
    assert problems(array) == [f"{array}:1: a JSON array; write one object a line (JSON Lines)"]


def test_other_column_names(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"review": "fine", "stars": 4}\n')
    [example] = read_texts(path, text_column="review", label_column="stars").examples
    assert (example.text, example.label) == ("fine", "4")


def test_a_missing_field_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n{"label": "y"}\n')
    assert problems(path) == [f"{path}:2: no 'label' field", f"{path}:3: no 'text' field"]


def test_a_missing_csv_column_names_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "sentence,label\nhello,x\n")
    assert problems(path) == [f"{path}:1: no 'text' column in the header (columns: 'sentence', 'label')"]


def test_short_csv_rows_and_multiline_records_name_their_first_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", 'text,label\n"two\nlines",x\nonly text\nok,y\n')
    assert problems(path) == [f"{path}:4: no 'label' field"]


def test_bad_values_are_named(tmp_path: Path) -> None:
    lines = ['{"text": 3, "label": "x"}', '{"text": "a", "label": true}', '{"text": "a", "label": " "}', "[1, 2]", "{"]
    path = write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    found = problems(path)
    assert [p.split(": ", 1)[0] for p in found] == [f"{path}:{n}" for n in (1, 2, 3, 4, 5)]
    assert "'text' is int, not a string" in found[0] and "'label' is True" in found[1]
    assert "not an object" in found[3] and "not JSON" in found[4]


@pytest.mark.parametrize("content", ["", "\n\n", "text,label\n"])
def test_an_empty_file_is_refused(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / ("a.csv" if "," in content else "a.jsonl"), content)
    [problem] = problems(path)
    assert problem.startswith(f"{path}: no examples")


def test_unknown_formats_missing_files_and_bad_encodings(tmp_path: Path) -> None:
    assert "unknown format '.txt'" in problems(write(tmp_path / "a.txt", "x"))[0]
    assert "cannot read" in problems(tmp_path / "missing.jsonl")[0]
    latin = tmp_path / "a.jsonl"
    latin.write_bytes(b'{"text": "ok", "label": "x"}\n{"text": "caf\xe9", "label": "x"}\n')
    assert problems(latin)[0].startswith(f"{latin}:2: not UTF-8")


def test_many_problems_are_listed_then_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"text": "a"}\n' * 25)
    with pytest.raises(DataError) as info:
        read_texts(path)
    assert len(info.value.problems) == 25 and str(info.value).endswith("... and 5 more")


def test_labels_are_sorted_numerically_when_they_are_numbers(tmp_path: Path) -> None:
    numbers = read_texts(write(tmp_path / "n.jsonl", "".join(f'{{"text": "t", "label": {n}}}\n' for n in (10, 2, 1))))
    words = read_texts(write(tmp_path / "w.csv", "text,label\nt,b\nt,a\nt,b\n"))
    assert label_names(numbers) == ["1", "2", "10"] and label_names(words) == ["a", "b"]
    with pytest.raises(DataError, match="one label only"):
        label_names(read_texts(write(tmp_path / "one.csv", "text,label\nt,a\nu,a\n")))


def test_a_label_seen_only_in_eval_names_its_lines(tmp_path: Path) -> None:
    evaluation = read_texts(write(tmp_path / "eval.csv", "text,label\nt,a\nt,c\nt,b\nt,c\n"))
    with pytest.raises(DataError) as info:
        check_eval_labels(evaluation, ["a", "b"])
    assert info.value.problems == [
        f"{evaluation.path}:{n}: label 'c' is not in the training data (labels: a, b)" for n in (3, 5)
    ]
    check_eval_labels(evaluation, ["a", "b", "c"])


def test_long_texts_are_cut_and_their_lines_named(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "text,label\nshort,a\n" + "x" * 11 + ",b\nééé,a\n")  # é: 2 bytes
    tokenized = tokenize(read_texts(path), max_bytes=5)
    assert tokenized.truncated == [3, 4]
    assert tokenized.ids[0] == ByteTokenizer().encode("short")
    assert tokenized.ids[1] == [CLS_ID, *ByteTokenizer().encode("x" * 5, add_special_tokens=False), SEP_ID]
    assert len(tokenized.ids[2]) == 5 + 2
    assert tokenized.warning(path, 5) == f"{path}: 2 text(s) longer than 5 bytes cut to the first 5 (lines 3, 4)"
    assert tokenize(read_texts(path), max_bytes=11).warning(path, 11) is None
