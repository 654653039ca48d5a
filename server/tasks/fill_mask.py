"""fill-mask: byte-level masked LM. Each [MASK] is one UTF-8 byte; only masked positions are decoded.

`targets` (the transformers pipeline's parameter): for a byte-level model a target is a string, which fills a run
of consecutive [MASK]s as long as its UTF-8 bytes. Its score is the product of its bytes' probabilities at the
run's positions, all from one decode (the masks are predicted together, each given the unmasked text only), and
the candidates of each run are ranked by it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from model_core import PerceiverForMaskedLM
from model_core.tokenizer import MASK_ID
from server.errors import ErrorCode, ServeError
from server.limits import Limits
from server.tasks.labels import DEFAULT_TOP_K
from server.tasks.text import TextCodec

MASK = "[MASK]"
# A candidate's JSON besides its sequence: score, token, token_str, run {start, end, fill of a short run}.
_CANDIDATE_BYTES = 192
Answer = list[dict[str, Any]] | list[list[dict[str, Any]]]


@dataclass(frozen=True)
class FillMaskItem:
    text: str
    ids: tuple[int, ...]
    positions: tuple[int, ...]  # token indexes of the [MASK]s


@dataclass(frozen=True)
class MaskScores:
    scores: list[list[float]]  # (P, k), best first
    tokens: list[list[int]]  # (P, k)


class FillMaskRunner:
    """Steps: prepare (tokenize, find the masks) -> collate (pad to the length bucket, positions padded with the
    first) -> forward (decoding the masked positions only) -> split ((P, V) logits per text) -> respond (the top_k
    candidates of every mask, in the HF payload)."""

    def __init__(self, model: PerceiverForMaskedLM, *, device: torch.device) -> None:
        self.model, self.device = model, device
        self.codec = TextCodec(max_length=model.config.max_position_embeddings)
        self.byte_offset = self.codec.tokenizer.encode("\x00", add_special_tokens=False)[0]
        self.vocab_size: int = model.config.vocab_size

    def prepare(self, text: str, *, max_masks: int) -> FillMaskItem:
        """`max_masks`: [MASK]s one text may hold (each one costs a decoder query and answer entries)."""
        ids = self.codec.encode(text)
        return FillMaskItem(text, tuple(ids), _mask_positions(ids, max_masks=max_masks))

    def prepare_ids(self, ids: Sequence[int], *, max_masks: int) -> FillMaskItem:
        """Token ids as the byte tokenizer makes them ([CLS] bytes [SEP], no padding)."""
        ids = self.codec.check_ids(ids)
        text = self.codec.tokenizer.decode(ids)
        return FillMaskItem(text, ids, _mask_positions(ids, id_input=True, max_masks=max_masks))

    def top_k(self, requested: int | None) -> int:
        """Candidates per mask: as asked (DEFAULT_TOP_K by default), at most the vocabulary."""
        return min(requested or DEFAULT_TOP_K, self.vocab_size)

    def key(self, item: FillMaskItem) -> int:
        return self.codec.bucket(item.ids)

    def collate(self, items: Sequence[FillMaskItem]) -> tuple[torch.Tensor, ...]:
        input_ids, attention_mask = self.codec.pad([i.ids for i in items], self.device)  # (B, L)
        width = max(len(i.positions) for i in items)
        rows = [[*i.positions, *[i.positions[0]] * (width - len(i.positions))] for i in items]
        return input_ids, attention_mask, torch.tensor(rows, device=self.device)  # positions (B, P)

    def forward(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        input_ids, attention_mask, positions = batch
        return self.model(input_ids, attention_mask=attention_mask, output_positions=positions).logits  # (B, P, V)

    def split(self, logits: torch.Tensor, items: Sequence[FillMaskItem]) -> list[torch.Tensor]:
        logits = logits.float().cpu()
        return [logits[b, : len(item.positions)] for b, item in enumerate(items)]  # (P, V): padding queries dropped

    def scores(self, logits: torch.Tensor, top_k: int) -> MaskScores:
        """The top_k candidates of every mask, best first: (P, V) logits -> probabilities."""
        scores, tokens = logits.softmax(dim=-1).topk(top_k, dim=-1)  # (P, k) each
        return MaskScores(scores.tolist(), tokens.tolist())

    def respond(self, item: FillMaskItem, logits: torch.Tensor, *, top_k: int) -> Answer:
        """HF shape, as plain JSON values: one [MASK] -> a list of candidates; several -> one list per [MASK].

        A candidate's `sequence` is the input with its one byte filled (HF's field, as long as the input: the
        answer's size is bounded by `answer_bytes` before the model runs); its `run` is small: the offsets of
        the run of consecutive masks it belongs to and the run's best fill."""
        result = self.scores(logits, top_k)
        parts = item.text.split(MASK)
        offsets = [m.start() for m in re.finditer(re.escape(MASK), item.text)]
        runs = self._runs(item, result, offsets)
        encoded = [part.encode() for part in parts]
        mask = MASK.encode()
        token_strs = self.codec.tokenizer.id_to_token_str
        per_mask: list[list[dict[str, Any]]] = []
        for j, (scores, tokens) in enumerate(zip(result.scores, result.tokens, strict=True)):
            # The text around mask j, as bytes: each candidate's sequence is before + its byte + after.
            before, after = mask.join(encoded[: j + 1]), mask.join(encoded[j + 1 :])
            per_mask.append(
                [
                    {
                        "score": score,
                        "token": token,
                        "token_str": token_strs(token),
                        "sequence": (before + self._bytes(token) + after).decode("utf-8", errors="replace"),
                        "run": runs[j],
                    }
                    for score, token in zip(scores, tokens, strict=True)
                ]
            )
        return per_mask[0] if len(per_mask) == 1 else per_mask

    def check_targets(self, item: FillMaskItem, targets: Sequence[str]) -> None:
        """Every run of masks must have a target of its byte length (422 before the model runs)."""
        lengths = {len(t.encode()) for t in targets}
        for run in mask_runs(item.positions):
            if len(run) not in lengths:
                offered = ", ".join(sorted({f"{n} bytes" for n in lengths}))
                raise ServeError(
                    ErrorCode.INVALID_INPUT,
                    f"a run of {len(run)} [MASK]s has no target of {len(run)} bytes (targets: {offered}); a "
                    "target fills a run of consecutive [MASK]s one byte each",
                )

    def respond_targets(
        self, item: FillMaskItem, logits: torch.Tensor, targets: Sequence[str], *, top_k: int
    ) -> Answer:
        """Per run of masks, the targets of its byte length ranked by the product of their bytes' probabilities;
        HF's candidate shape: one run -> a list of candidates, several -> a list per run."""
        log_probs = logits.float().log_softmax(dim=-1)  # (P, V)
        offsets = [m.start() for m in re.finditer(re.escape(MASK), item.text)]
        per_run: list[list[dict[str, Any]]] = []
        for run in mask_runs(item.positions):
            start, end = offsets[run[0]], offsets[run[-1]] + len(MASK)
            scored = []
            for target in dict.fromkeys(targets):  # once each, in the order given (ties keep it)
                ids = [self.byte_offset + b for b in target.encode()]
                if len(ids) == len(run):
                    scored.append((float(log_probs[run, ids].sum().exp()), target, ids[0]))
            scored.sort(key=lambda entry: -entry[0])
            per_run.append(
                [
                    {
                        "score": score,
                        "token": first,
                        "token_str": target,
                        "sequence": item.text[:start] + target + item.text[end:],
                        "run": {"start": start, "end": end, "fill": target},
                    }
                    for score, target, first in scored[:top_k]
                ]
            )
        return per_run[0] if len(per_run) == 1 else per_run

    def _bytes(self, token: int) -> bytes:
        if token >= self.byte_offset:
            return bytes([token - self.byte_offset])
        return self.codec.tokenizer.id_to_token_str(token).encode()

    def _runs(self, item: FillMaskItem, result: MaskScores, offsets: list[int]) -> list[dict[str, Any]]:
        """The run of each mask: consecutive [MASK]s, filled with their top candidates."""
        by_mask: list[dict[str, Any]] = []
        for group in mask_runs(item.positions):
            fill = b"".join(self._bytes(result.tokens[j][0]) for j in group).decode("utf-8", errors="replace")
            run = {"start": offsets[group[0]], "end": offsets[group[-1]] + len(MASK), "fill": fill}
            by_mask += [run] * len(group)
        return by_mask


def mask_runs(positions: Sequence[int]) -> list[list[int]]:
    """Indexes (into `positions`) of each run of consecutive mask positions."""
    runs: list[list[int]] = []
    for j, position in enumerate(positions):
        if runs and positions[runs[-1][-1]] == position - 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    return runs


def check_answer(
    items: Sequence[FillMaskItem], limits: Limits, *, top_k: int, targets: Sequence[str] | None = None
) -> int:
    """Refuse (413) an answer over the candidate or size limits; returns its number of candidates (top_k per mask,
    or with `targets` at most top_k per run of masks).

    Every candidate repeats its input in `sequence`, so the size is candidates x input length."""

    def slots(item: FillMaskItem) -> int:
        return len(item.positions) if targets is None else len(mask_runs(item.positions))

    per_slot = top_k if targets is None else min(top_k, len(set(targets)))
    candidates = sum(slots(i) * per_slot for i in items)
    masks = max(slots(i) for i in items)
    what = "[MASK]s" if targets is None else "runs of [MASK]s"
    limits.check_candidates(candidates, f"{len(items)} text(s) x up to {masks} {what} x top_k {per_slot}")
    size = 0
    for item in items:
        text_bytes = len(json.dumps(item.text, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        size += slots(item) * per_slot * (text_bytes + _CANDIDATE_BYTES)
    limits.check_answer(
        size,
        f"{candidates} candidates, each repeating its text",
        "lower top_k, or send fewer [MASK]s or shorter texts per request",
    )
    return candidates


def _mask_positions(ids: Sequence[int], *, max_masks: int, id_input: bool = False) -> tuple[int, ...]:
    positions = tuple(i for i, t in enumerate(ids) if t == MASK_ID)
    if not positions:
        example = (
            f"mark each byte to predict with token {MASK_ID}"
            if id_input
            else (f"mark each byte to predict with {MASK}, e.g. 'The capital of France is{MASK * 6}.'")
        )
        raise ServeError(ErrorCode.INVALID_INPUT, f"input has no {MASK}: {example}")
    if len(positions) > max_masks:
        what = f"mask tokens ({MASK_ID})" if id_input else f"{MASK}s"
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"input has {len(positions)} {what}; at most {max_masks} "
            "per text (max_masks_per_text): split it into several texts",
        )
    return positions
