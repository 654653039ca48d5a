"""fill-mask: byte-level masked LM. Each [MASK] is one UTF-8 byte; only masked positions are decoded."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_core.tokenizer import MASK_ID
from server.errors import ErrorCode, ServeError
from server.schemas import FillMaskCandidate, FillMaskOneText, MaskRun
from server.tasks.text import TextCodec

MASK = "[MASK]"
DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class FillMaskItem:
    text: str
    ids: tuple[int, ...]
    positions: tuple[int, ...]  # token indexes of the [MASK]s
    top_k: int
    raw: bool = False  # split returns the masked positions' logits (P, V) instead of MaskScores


@dataclass(frozen=True)
class MaskScores:
    scores: list[list[float]]  # (P, k), best first
    tokens: list[list[int]]  # (P, k)


class FillMaskRunner:
    def __init__(self, model: torch.nn.Module, *, device: torch.device) -> None:
        self.model, self.device = model, device
        self.codec = TextCodec(max_length=model.config.max_position_embeddings)
        self.byte_offset = self.codec.tokenizer.encode("\x00", add_special_tokens=False)[0]

    def prepare(self, text: str, *, top_k: int | None, raw: bool = False) -> FillMaskItem:
        ids = self.codec.encode(text)
        return FillMaskItem(text, tuple(ids), _mask_positions(ids), top_k or DEFAULT_TOP_K, raw)

    def prepare_ids(self, ids: Sequence[int]) -> FillMaskItem:
        """Token ids as the byte tokenizer makes them ([CLS] bytes [SEP], no padding); answers logits."""
        ids = self.codec.check_ids(ids)
        text = self.codec.tokenizer.decode(ids)
        return FillMaskItem(text, ids, _mask_positions(ids, id_input=True), DEFAULT_TOP_K, raw=True)

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

    def split(self, logits: torch.Tensor, items: Sequence[FillMaskItem]) -> list[MaskScores | torch.Tensor]:
        probs = logits.float().softmax(dim=-1).cpu()
        results: list[MaskScores | torch.Tensor] = []
        for b, item in enumerate(items):
            if item.raw:
                results.append(logits[b, : len(item.positions)].cpu())  # (P, V): drop the padding queries
                continue
            row = probs[b, : len(item.positions)]
            scores, tokens = row.topk(min(item.top_k, row.shape[-1]), dim=-1)
            results.append(MaskScores(scores.tolist(), tokens.tolist()))
        return results

    def respond(self, item: FillMaskItem, result: MaskScores) -> FillMaskOneText:
        """HF shape: one [MASK] -> a list of candidates; several -> one list per [MASK]."""
        parts = item.text.split(MASK)
        offsets = [m.start() for m in re.finditer(re.escape(MASK), item.text)]
        runs = self._runs(item, result, parts, offsets)
        encoded = [part.encode() for part in parts]
        mask = MASK.encode()
        per_mask = []
        for j, (scores, tokens) in enumerate(zip(result.scores, result.tokens, strict=True)):
            # The text around mask j, as bytes: each candidate's sequence is before + its byte + after.
            before, after = mask.join(encoded[: j + 1]), mask.join(encoded[j + 1:])
            per_mask.append([FillMaskCandidate(
                score=score, token=token, token_str=self.codec.tokenizer.id_to_token_str(token),
                sequence=(before + self._bytes(token) + after).decode("utf-8", errors="replace"), run=runs[j],
            ) for score, token in zip(scores, tokens, strict=True)])
        return per_mask[0] if len(per_mask) == 1 else per_mask

    def _bytes(self, token: int) -> bytes:
        if token >= self.byte_offset:
            return bytes([token - self.byte_offset])
        return self.codec.tokenizer.id_to_token_str(token).encode()

    def _runs(self, item: FillMaskItem, result: MaskScores, parts: list[str], offsets: list[int]) -> list[MaskRun]:
        """The run of each mask: consecutive [MASK]s, filled with their top candidates."""
        groups: list[list[int]] = []
        for j, pos in enumerate(item.positions):
            if groups and item.positions[groups[-1][-1]] == pos - 1:
                groups[-1].append(j)
            else:
                groups.append([j])
        by_mask: list[MaskRun] = []
        for group in groups:
            fills = {j: self._bytes(result.tokens[j][0]) for j in group}
            run = MaskRun(start=offsets[group[0]], end=offsets[group[-1]] + len(MASK),
                          fill=b"".join(fills.values()).decode("utf-8", errors="replace"),
                          sequence=_render(parts, fills))
            by_mask += [run] * len(group)
        return by_mask


def _mask_positions(ids: Sequence[int], *, id_input: bool = False) -> tuple[int, ...]:
    positions = tuple(i for i, t in enumerate(ids) if t == MASK_ID)
    if not positions:
        example = f"mark each byte to predict with token {MASK_ID}" if id_input else (
            f"mark each byte to predict with {MASK}, e.g. 'The capital of France is{MASK * 6}.'")
        raise ServeError(ErrorCode.INVALID_INPUT, f"input has no {MASK}: {example}")
    return positions


def _render(parts: list[str], fills: dict[int, bytes]) -> str:
    """The text with mask j replaced by fills[j] (bytes), other masks kept."""
    out = bytearray(parts[0].encode())
    for j, part in enumerate(parts[1:]):
        out += fills.get(j, MASK.encode()) + part.encode()
    return out.decode("utf-8", errors="replace")
