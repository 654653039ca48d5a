"""Where training runs and in what precision, and how token rows become padded batches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from finetune.errors import OptionsError
from model_core.tokenizer import ByteTokenizer, length_buckets


@dataclass(frozen=True)
class Runtime:
    """A device, and bfloat16 autocast where it pays (CUDA with bf16 support); parameters, gradients
    and the optimiser state stay float32 everywhere."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None

    @classmethod
    def pick(cls, spec: str = "auto") -> Runtime:
        """`auto`: the first CUDA device if there is one, else the CPU; or any torch device name."""
        if spec == "auto":
            spec = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(spec)
        except RuntimeError as exc:
            raise OptionsError(f"device {spec!r}: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise OptionsError(f"device {spec!r}: CUDA is not available here")
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return cls(device, torch.bfloat16 if bf16 else None)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.autocast_dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
            yield


class Padder:
    """Rows of token ids -> (input_ids, attention_mask) on the device, padded to the length bucket of the
    longest row, as the server pads them (few shapes, and the mask keeps padding out of the latents)."""

    def __init__(self, *, max_length: int, device: torch.device) -> None:
        self.tokenizer = ByteTokenizer()
        self.buckets = length_buckets(max_length)
        self.device = device

    def __call__(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, mask = self.tokenizer.pad(rows, bucket_sizes=self.buckets)  # (B, L) each
        return input_ids.to(self.device), mask.to(self.device)
