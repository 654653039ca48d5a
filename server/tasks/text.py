"""Shared text plumbing: byte tokenization with length buckets, so batches pad only to a bucket."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model_core.tokenizer import ByteTokenizer, bucket_length, length_buckets
from server.errors import ErrorCode, ServeError


class TextCodec:
    """Tokenize one text, check its length, and pad a group of them to their shared bucket."""

    def __init__(self, *, max_length: int) -> None:
        self.tokenizer = ByteTokenizer()
        self.max_length = max_length
        self.buckets = length_buckets(max_length)  # 16, 32, ... up to the model's length: model_core's policy

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=True)
        if len(ids) > self.max_length:
            raise ServeError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                (
                    f"input is {len(ids)} tokens (UTF-8 bytes plus 2 special tokens); this model takes at most "
                    f"{self.max_length}"
                ),
            )
        return ids

    def check_ids(self, ids: Sequence[int]) -> tuple[int, ...]:
        """Token ids sent by a client (raw-tensor protocols): in the vocabulary, within the model's length."""
        if not ids:
            raise ServeError(ErrorCode.INVALID_INPUT, "a row of input_ids has no tokens")
        vocab = self.tokenizer.vocab_size
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise ServeError(ErrorCode.INVALID_INPUT, f"token id {bad} is outside the vocabulary [0, {vocab})")
        if len(ids) > self.max_length:
            raise ServeError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"input is {len(ids)} tokens; this model takes at most {self.max_length}"
            )
        return tuple(int(i) for i in ids)

    def bucket(self, ids: Sequence[int]) -> int:
        """The length a batch holding `ids` is padded to (encode and check_ids bound it by the largest)."""
        bucket = bucket_length(len(ids), self.buckets)
        assert bucket is not None, "longer than the model's length: refused by encode/check_ids"
        return bucket

    def pad(self, rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), each (B, L) on `device`, L the bucket of the longest row."""
        input_ids, attention_mask = self.tokenizer.pad([list(r) for r in rows], bucket_sizes=self.buckets)
        return input_ids.to(device), attention_mask.to(device)
