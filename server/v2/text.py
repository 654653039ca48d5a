"""Tensors of the text models: fill-mask and text-classification.

Inputs, either form per request:
  text            BYTES [N] or [N, 1]   UTF-8 text (fill-mask: with [MASK]s)
  input_ids       INT64 [N, L]          byte-tokenizer ids ([CLS] bytes [SEP]); optional
  attention_mask  INT64 [N, L]          1 for tokens, then 0 for right padding
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from server.engine.serving import Call
from server.limits import Limits
from server.tasks.fill_mask import FillMaskRunner
from server.tasks.text_classification import TextClassificationRunner
from server.v2.binary import Tensor
from server.v2.protocol import TensorMetadata
from server.v2.tensors import (
    Options,
    Planned,
    bad,
    check,
    check_answer,
    choose,
    classified,
    each,
    meta,
    plan_classifier,
    strings,
)

USAGE = (
    "text (BYTES [N] or [N, 1]), or input_ids (INT64 [N, L], byte-tokenizer ids with [CLS] and [SEP]) "
    "with an optional attention_mask (INT64 [N, L]: 1s, then 0s for right padding)"
)
ACCEPTED = (frozenset({"text"}), frozenset({"input_ids"}), frozenset({"input_ids", "attention_mask"}))
_TOKEN_BYTES = 8  # a byte token's text: one UTF-8 character, or a special token such as [MASK]


@dataclass(frozen=True)
class TextRow:
    text: str | None = None
    ids: tuple[int, ...] | None = None


def text_inputs() -> list[TensorMetadata]:
    return [
        meta("text", "BYTES", None),
        meta("input_ids", "INT64", None, None),
        meta("attention_mask", "INT64", None, None),
    ]


def parse_text(inputs: Mapping[str, Tensor]) -> list[TextRow]:
    names = choose(inputs, ACCEPTED, USAGE)
    if names == {"text"}:
        return [TextRow(text=t) for t in strings(inputs["text"])]
    ids = inputs["input_ids"]
    check(ids, "INT64", (2,))
    rows, width = ids.array, ids.shape[1]
    lengths = np.full(len(rows), width)
    if (mask := inputs.get("attention_mask")) is not None:
        check(mask, "INT64", (2,))
        if mask.shape != ids.shape:
            raise bad(f"attention_mask has shape {mask.shape}; input_ids has {ids.shape}")
        lengths = mask.array.sum(axis=1)
        if not (mask.array == (np.arange(width) < lengths[:, None])).all():
            raise bad("attention_mask rows must be 1s followed by 0s (right padding, as the byte tokenizer pads)")
    return [TextRow(ids=tuple(row[:n].tolist())) for row, n in zip(rows, lengths, strict=True)]


def _prepare(
    rows: Sequence[TextRow], by_text: Callable[[str], Any], by_ids: Callable[[tuple[int, ...]], Any]
) -> list[Any]:
    """Items of text or of token-id rows, an error naming its row. CPU work: call off the event loop."""
    if rows[0].text is not None:
        return each("text", [r.text or "" for r in rows], by_text)
    return each("input_ids", [r.ids or () for r in rows], by_ids)


class TextClassificationTensors:
    """Outputs: logits FP32 [N, C]; labels BYTES [N, k] "score:index:label" (k: top_k, default C)."""

    classifiable = frozenset({"logits"})
    required = frozenset[str]()  # text, or input_ids (+ attention_mask)

    def inputs(self, runner: TextClassificationRunner | None) -> list[TensorMetadata]:
        return text_inputs()

    def outputs(self, runner: TextClassificationRunner | None) -> list[TensorMetadata]:
        classes = len(runner.labels) if runner else None
        return [meta("logits", "FP32", None, classes), meta("labels", "BYTES", None, None)]

    def parse(self, inputs: Mapping[str, Tensor], limits: Limits) -> list[TextRow]:
        return parse_text(inputs)

    async def infer(self, call: Call, rows: Sequence[TextRow], options: Options) -> dict[str, Tensor]:
        runner = call.runner_as(TextClassificationRunner)
        plan = plan_classifier(call, len(rows), runner.labels, options, default_top_k=len(runner.labels))
        with call.step("decode", step="tokenize"):
            items = await run_in_threadpool(_prepare, rows, runner.prepare, runner.prepare_ids)
        return classified(torch.stack(await call.infer(items)), runner.labels, options, plan)  # logits (N, C)

    def classes(self, runner: TextClassificationRunner, output: str) -> list[str] | None:
        return list(runner.labels.names) if output == "logits" else None


class FillMaskTensors:
    """Outputs, one row per [MASK] (P: the most masks of any input; shorter inputs padded):
    mask_positions INT64 [N, P] (token index, -1 = padding); logits FP32 [N, P, V];
    token_ids INT64 [N, P, k] (-1 = padding); scores FP32 [N, P, k] (softmax); tokens BYTES [N, P, k]."""

    classifiable = frozenset({"logits"})
    required = frozenset[str]()  # text, or input_ids (+ attention_mask)

    def inputs(self, runner: FillMaskRunner | None) -> list[TensorMetadata]:
        return text_inputs()

    def outputs(self, runner: FillMaskRunner | None) -> list[TensorMetadata]:
        vocab = runner.model.config.vocab_size if runner else None
        return [
            meta("mask_positions", "INT64", None, None),
            meta("logits", "FP32", None, None, vocab),
            meta("token_ids", "INT64", None, None, None),
            meta("scores", "FP32", None, None, None),
            meta("tokens", "BYTES", None, None, None),
        ]

    def parse(self, inputs: Mapping[str, Tensor], limits: Limits) -> list[TextRow]:
        return parse_text(inputs)

    async def infer(self, call: Call, rows: Sequence[TextRow], options: Options) -> dict[str, Tensor]:
        runner = call.runner_as(FillMaskRunner)
        masks = call.limits.max_masks_per_text
        with call.step("decode", step="tokenize"):
            items = await run_in_threadpool(
                _prepare,
                rows,
                lambda text: runner.prepare(text, max_masks=masks),
                lambda ids: runner.prepare_ids(ids, max_masks=masks),
            )
        n, width, vocab = len(items), max(len(i.positions) for i in items), runner.vocab_size
        top_k = runner.top_k(options.top_k)
        check_answer(
            call.limits,
            options,
            {
                "mask_positions": Planned("INT64", [n, width]),
                "logits": Planned(options.float_datatype, [n, width, vocab]),
                "token_ids": Planned("INT64", [n, width, top_k], ranked=True),
                "scores": Planned(options.float_datatype, [n, width, top_k], ranked=True),
                "tokens": Planned("BYTES", [n, width, top_k], _TOKEN_BYTES, ranked=True),
            },
            label_bytes=_TOKEN_BYTES,
        )
        results: list[torch.Tensor] = await call.infer(items)  # (P_i, V) each
        return await run_in_threadpool(self._outputs, runner, items, results, options)

    def _outputs(
        self, runner: FillMaskRunner, items: Sequence[Any], results: Sequence[torch.Tensor], options: Options
    ) -> dict[str, Tensor]:
        width, vocab = max(len(i.positions) for i in items), results[0].shape[-1]
        positions = torch.full((len(items), width), -1, dtype=torch.int64)
        logits = torch.zeros(len(items), width, vocab, dtype=results[0].dtype)  # (N, P, V)
        for n, (item, result) in enumerate(zip(items, results, strict=True)):
            positions[n, : len(item.positions)] = torch.tensor(item.positions)
            logits[n, : len(item.positions)] = result
        padding = positions < 0
        scores, token_ids = logits.float().softmax(-1).topk(runner.top_k(options.top_k), dim=-1)
        scores[padding], token_ids[padding] = 0.0, -1
        tokenizer = runner.codec.tokenizer
        tokens = ["" if t < 0 else tokenizer.id_to_token_str(t) for t in token_ids.reshape(-1).tolist()]
        out = {
            "mask_positions": Tensor.from_torch("mask_positions", positions, "INT64"),
            "logits": Tensor.from_torch("logits", logits, options.float_datatype),
            "token_ids": Tensor.from_torch("token_ids", token_ids, "INT64"),
            "scores": Tensor.from_torch("scores", scores, options.float_datatype),
            "tokens": Tensor.from_strings("tokens", tokens, token_ids.shape),
        }
        return {name: tensor for name, tensor in out.items() if name in options.wanted}

    def classes(self, runner: FillMaskRunner, output: str) -> list[str] | None:
        if output != "logits":
            return None
        return [runner.codec.tokenizer.id_to_token_str(i) for i in range(runner.model.config.vocab_size)]
