"""The Perceiver IO byte tokenizer (UTF-8 bytes + 6), id-for-id compatible with
transformers' `PerceiverTokenizer`.

Behaviour copied from transformers 5.23 (checked against it in tests):
- The six special-token strings ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]"),
  when they appear literally in the text, become their ids. They are added with
  lstrip=rstrip=False, so the spaces around them are kept as byte tokens.
  Matching is case-sensitive ("[mask]" stays bytes).
- `decode` writes specials as their strings, decodes the rest with errors="replace".
  Spaces are not cleaned up and none are added around specials.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
MASK_ID = 3
CLS_ID = 4
SEP_ID = 5
BYTE_OFFSET = 6
VOCAB_SIZE = 256 + BYTE_OFFSET  # 262
MAX_LENGTH = 2048

PAD_TOKEN = "[PAD]"
BOS_TOKEN = "[BOS]"
EOS_TOKEN = "[EOS]"
MASK_TOKEN = "[MASK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"

SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, MASK_TOKEN, CLS_TOKEN, SEP_TOKEN)
"""Indexed by id: SPECIAL_TOKENS[i] is the string for id i < BYTE_OFFSET."""


def length_buckets(max_length: int, *, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from `smallest` up to, and including, `max_length`: the few lengths a batch is padded to
    (few distinct shapes keep compiled and cached kernels warm)."""
    sizes, size = [], smallest
    while size < max_length:
        sizes.append(size)
        size *= 2
    return (*sizes, max_length)


def bucket_length(length: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds `length` tokens, or None when none does."""
    return min((b for b in buckets if b >= length), default=None)


DEFAULT_BUCKET_SIZES: tuple[int, ...] = length_buckets(2048, smallest=64)  # 64, 128, ..., 2048

_SPECIAL_TO_ID = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
# The capturing group makes re.split keep the specials: odd indices are specials.
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


class ByteTokenizer:
    """Stateless byte tokenizer; safe to share between threads."""

    pad_id = PAD_ID
    mask_id = MASK_ID
    cls_id = CLS_ID
    sep_id = SEP_ID
    vocab_size = VOCAB_SIZE
    max_length = MAX_LENGTH

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Ids for `text`, as `[CLS] bytes [SEP]` unless add_special_tokens=False."""
        ids: list[int] = []
        for k, piece in enumerate(_SPECIAL_SPLIT.split(text)):
            if k % 2:
                ids.append(_SPECIAL_TO_ID[piece])
            elif piece:
                ids.extend(b + BYTE_OFFSET for b in piece.encode("utf-8"))
        if add_special_tokens:
            return [CLS_ID, *ids, SEP_ID]
        return ids

    def encode_pair(self, text_a: str, text_b: str) -> list[int]:
        """`[CLS] A [SEP] B [SEP]`, as transformers builds a sequence pair."""
        a = self.encode(text_a, add_special_tokens=False)
        b = self.encode(text_b, add_special_tokens=False)
        return [CLS_ID, *a, SEP_ID, *b, SEP_ID]

    def pad(
        self,
        batch: Sequence[Sequence[int]],
        *,
        length: int | None = None,
        bucket_sizes: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad with PAD_ID into (input_ids (B, L), attention_mask (B, L)), int64.

        L is `length` if given; otherwise the smallest bucket >= the longest sequence
        (few distinct shapes keep compiled/cached kernels warm), MAX_LENGTH if no bucket
        is big enough, or the longest sequence when `bucket_sizes` is empty.
        """
        if len(batch) == 0:
            raise ValueError("cannot pad an empty batch")
        lengths = [len(seq) for seq in batch]
        longest = max(lengths)
        if longest > MAX_LENGTH:
            i = lengths.index(longest)
            raise ValueError(f"sequence {i} has {longest} tokens; the model accepts at most {MAX_LENGTH}")
        if length is not None:
            if length > MAX_LENGTH:
                raise ValueError(f"length={length} exceeds the maximum of {MAX_LENGTH}")
            if length < longest:
                raise ValueError(f"length={length} is shorter than the longest sequence ({longest} tokens)")
            target = length
        else:
            buckets = DEFAULT_BUCKET_SIZES if bucket_sizes is None else tuple(bucket_sizes)
            bucket = bucket_length(longest, buckets)
            target = longest if not buckets else MAX_LENGTH if bucket is None else bucket
        input_ids = torch.full((len(batch), target), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), target), dtype=torch.long)
        for row, seq in enumerate(batch):
            n = len(seq)
            if n:
                input_ids[row, :n] = torch.as_tensor(seq, dtype=torch.long)
                attention_mask[row, :n] = 1
        return input_ids, attention_mask

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text for `ids`; invalid UTF-8 becomes U+FFFD. Raises ValueError for ids outside [0, 262)."""
        buf = bytearray()
        for token in ids:
            i = int(token)
            if i >= BYTE_OFFSET:
                if i >= VOCAB_SIZE:
                    raise ValueError(f"token id {i} is out of range [0, {VOCAB_SIZE})")
                buf.append(i - BYTE_OFFSET)
            elif i >= 0:
                if not skip_special_tokens:
                    # Special names are ASCII, so they end any pending multi-byte
                    # sequence exactly as transformers' per-chunk decoding does.
                    buf += SPECIAL_TOKENS[i].encode("ascii")
            else:
                raise ValueError(f"token id {i} is out of range [0, {VOCAB_SIZE})")
        return buf.decode("utf-8", errors="replace")

    def id_to_token_str(self, i: int) -> str:
        """One id's string: a special's name, or its byte decoded (U+FFFD for bytes >= 0x80)."""
        return self.decode([i])
