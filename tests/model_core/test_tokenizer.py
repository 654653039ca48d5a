"""ByteTokenizer parity with transformers.PerceiverTokenizer (the oracle)."""

from __future__ import annotations

import random

import pytest
import torch

from model_core import tokenizer as tk
from model_core.tokenizer import ByteTokenizer, bucket_length, length_buckets

transformers = pytest.importorskip("transformers")

TEXTS = [
    "hello",
    "This is an incomplete sentence where some words are missing.",
    "",
    " ",
    "  two  spaces ",
    "café é",
    "日本語のテキスト",
    "emoji 😀👍🏽 and flags 🇫🇷",
    "tab\tnew\nline\r\x00nul",
    "[MASK]",
    "a [MASK] b",
    "a[MASK][MASK]b",
    "[MASK] at start",
    "at end [MASK]",
    " [MASK] ",
    "[MASK] [MASK]  [MASK]",
    "[[MASK]]",
    "[MASK",
    "MASK]",
    "[mask] is not special",
    "[PAD][BOS][EOS][CLS][SEP]x",
    "[UNK] is not a Perceiver token",
    "é[MASK]日",
]


@pytest.fixture(scope="module")
def hf():
    return transformers.PerceiverTokenizer()


@pytest.fixture(scope="module")
def ours():
    return ByteTokenizer()


def test_constants_match_transformers(hf):
    assert [
        hf.pad_token_id,
        hf.bos_token_id,
        hf.eos_token_id,
        hf.mask_token_id,
        hf.cls_token_id,
        hf.sep_token_id,
    ] == [tk.PAD_ID, tk.BOS_ID, tk.EOS_ID, tk.MASK_ID, tk.CLS_ID, tk.SEP_ID]
    names = [hf.pad_token, hf.bos_token, hf.eos_token, hf.mask_token, hf.cls_token, hf.sep_token]
    assert list(tk.SPECIAL_TOKENS) == names
    assert tk.VOCAB_SIZE == len(hf) == 262
    assert tk.MAX_LENGTH == hf.model_max_length == 2048


def test_reference_example(ours):
    assert ours.encode("hello") == [4, 110, 107, 114, 114, 117, 5]
    assert ours.encode("é", add_special_tokens=False) == [201, 175]  # UTF-8 C3 A9, + 6


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches(hf, ours, text):
    assert ours.encode(text) == hf(text).input_ids
    assert ours.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("pair", [("ab", "cd"), ("", ""), ("[MASK] x", "y [SEP]"), ("é", "日本")])
def test_encode_pair_matches(hf, ours, pair):
    assert ours.encode_pair(*pair) == hf(*pair).input_ids


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trip(hf, ours, text):
    ids = ours.encode(text)
    assert ours.decode(ids) == hf.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    assert ours.decode(ours.encode(text, add_special_tokens=False)) == text


def test_decode_invalid_utf8_matches(hf, ours):
    cases = [
        [0xC3 + 6],  # truncated 2-byte sequence
        [0xC2 + 6, 0xC3 + 6],  # two lead bytes
        [0xE6 + 6, 0x97 + 6, tk.MASK_ID, 0xA5 + 6],  # 3-byte char cut by a special
        [0xFF + 6, 0x80 + 6, 110],
        [tk.MASK_ID, 0xF0 + 6, 0x9F + 6, tk.SEP_ID, tk.PAD_ID],
    ]
    rng = random.Random(0)
    cases += [[rng.randrange(262) for _ in range(rng.randrange(1, 12))] for _ in range(300)]
    for ids in cases:
        assert ours.decode(ids) == hf.decode(ids), ids
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True), ids


def test_id_to_token_str_matches(hf, ours):
    for i in range(tk.VOCAB_SIZE):
        assert ours.id_to_token_str(i) == hf.decode([i]), i
    assert ours.id_to_token_str(tk.MASK_ID) == "[MASK]"
    assert ours.id_to_token_str(ord("a") + 6) == "a"
    assert ours.id_to_token_str(0xC3 + 6) == "\ufffd"


def test_decode_rejects_out_of_range(ours):
    with pytest.raises(ValueError, match="262"):
        ours.decode([262])
    with pytest.raises(ValueError):
        ours.decode([-1])


def test_pad_matches_transformers_padding(hf, ours):
    texts = ["ab", "abcd", "", "é[MASK]"]
    ids, mask = ours.pad([ours.encode(t) for t in texts], length=2048)
    expected = hf(texts, padding="max_length", return_tensors="pt")
    assert ids.dtype == mask.dtype == torch.long
    assert torch.equal(ids, expected.input_ids)
    assert torch.equal(mask, expected.attention_mask)


def test_pad_buckets(ours):
    ids, mask = ours.pad([[4, 5], [4, 7, 8, 5]])
    assert ids.shape == mask.shape == (2, 64)
    assert ids[0, :3].tolist() == [4, 5, 0] and mask[0, :3].tolist() == [1, 1, 0]
    assert mask.sum(dim=1).tolist() == [2, 4]
    assert ours.pad([[7] * 65])[0].shape == (1, 128)
    assert ours.pad([[7] * 2048])[0].shape == (1, 2048)
    assert ours.pad([[7] * 10], bucket_sizes=(8, 16))[0].shape == (1, 16)
    assert ours.pad([[7] * 20], bucket_sizes=(8, 16))[0].shape == (1, 2048)  # no bucket fits
    assert ours.pad([[7] * 10, [7]], bucket_sizes=())[0].shape == (2, 10)  # to the longest
    assert ours.pad([[7] * 10], length=12)[0].shape == (1, 12)
    assert ours.pad([[]])[1].sum() == 0


def test_pad_errors(ours):
    with pytest.raises(ValueError, match="2049 tokens"):
        ours.pad([[7] * 3, [7] * 2049])
    with pytest.raises(ValueError, match="shorter"):
        ours.pad([[7] * 10], length=5)
    with pytest.raises(ValueError, match="exceeds"):
        ours.pad([[7]], length=4096)
    with pytest.raises(ValueError, match="empty"):
        ours.pad([])


def test_random_text_fuzz(hf, ours):
    rng = random.Random(1)
    alphabet = ["a", " ", "é", "日", "😀", "[MASK]", "[SEP]", "[", "]", "M", "\n"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 15)))
        ids = ours.encode(text)
        assert ids == hf(text).input_ids, text
        assert ours.decode(ids) == hf.decode(ids), text


def test_length_buckets() -> None:
    assert length_buckets(256) == (16, 32, 64, 128, 256)
    assert length_buckets(2048)[-1] == 2048 and length_buckets(100) == (16, 32, 64, 100)
    assert bucket_length(17, length_buckets(256)) == 32 and bucket_length(300, length_buckets(256)) is None
