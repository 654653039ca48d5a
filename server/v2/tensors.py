"""What the task adapters share: the adapter contract, input checks, and the label/classification outputs.

An adapter maps a task's named tensors onto its runner: `parse` checks and decodes the inputs before the
model is touched (CPU work, off the event loop), `infer` turns them into the runner's items, runs them
through the model's batcher (`call.infer`) and builds the requested outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from server.engine.serving import Call
from server.errors import ErrorCode, ServeError, prepare_each
from server.http.bodies import decode_base64
from server.limits import Limits
from server.tasks.labels import Function, Labels, apply_function
from server.v2.binary import NUMPY, Tensor
from server.v2.protocol import TensorMetadata

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Options:
    """What the request asks of the outputs."""

    wanted: frozenset[str]
    top_k: int | None = None
    function: Function | None = None
    float_datatype: str = "FP32"
    binary: frozenset[str] = frozenset()  # outputs sent in the binary section
    classification: Mapping[str, int] = field(default_factory=dict)  # output -> top-n classes asked for


@dataclass(frozen=True)
class Planned:
    """An output as it will be built: its datatype and shape, and for BYTES the size of one element."""

    datatype: str
    shape: Sequence[int]
    element_bytes: int = 0
    ranked: bool = False  # its elements are ranked entries (labels, top-k candidates)


# Bytes of one element written as JSON: a float's shortest repr with its comma, an int64's, true/false.
_JSON_BYTES = {"BOOL": 6, "FP16": 24, "FP32": 24, "FP64": 25, "BF16": 24}
_CLASS_ENTRY_BYTES = 24  # "value:index:" of a classification entry, before its label


def check_answer(limits: Limits, options: Options, planned: Mapping[str, Planned], *, label_bytes: int = 0) -> None:
    """Refuse (413) outputs whose ranked entries or whose size, JSON or binary as asked, are over the limits.
    Called with the shapes the request implies, before the model runs."""
    total, entries = 0, 0
    for name in options.wanted:
        plan = planned[name]
        shape, element, ranked = list(plan.shape), plan.element_bytes, plan.ranked
        datatype = plan.datatype
        if (count := options.classification.get(name)) is not None:
            shape[-1] = min(count, shape[-1])
            datatype, element, ranked = "BYTES", _CLASS_ENTRY_BYTES + label_bytes, True
        elements = math.prod(shape)
        if ranked:
            entries = max(entries, elements)
        if datatype == "BYTES":
            total += elements * (element + 4)  # a 4-byte length in binary; quotes and a comma in JSON
        elif name in options.binary:
            total += elements * NUMPY[datatype].itemsize
        else:
            total += elements * _JSON_BYTES.get(datatype, 21)
    limits.check_candidates(entries, f"outputs {', '.join(sorted(options.wanted))}")
    limits.check_answer(
        total,
        f"outputs {', '.join(sorted(options.wanted))}",
        "ask for fewer outputs (`outputs`), binary data (`binary_data_output`), a lower top_k, or send fewer rows",
    )


class TaskTensors(Protocol):
    classifiable: frozenset[str]  # outputs whose last axis holds classes (the classification extension)
    required: frozenset[str]  # inputs every request has (the others are alternative forms: optional)

    def inputs(self, runner: Any | None) -> list[TensorMetadata]:
        """The input tensors; dims known only once the model is loaded (runner not None) are -1 before."""

    def outputs(self, runner: Any | None) -> list[TensorMetadata]: ...

    def parse(self, inputs: Mapping[str, Tensor], limits: Limits) -> Sequence[Any]:
        """One value per batch row (texts, id rows, encoded files whose headers are checked...), before the model
        is touched. Raises ServeError for bad inputs. CPU work: call off the event loop."""

    async def infer(self, call: Call, rows: Sequence[Any], options: Options) -> dict[str, Tensor]:
        """The outputs named in options.wanted: checks the answer the rows imply (`check_answer`), then decodes
        files one at a time (`call.decode`), runs the rows through the batcher and builds the outputs."""

    def classes(self, runner: Any, output: str) -> list[str] | None:
        """Names of the classes along the last axis of a classifiable `output` (None: indexes only)."""


def bad(message: str) -> ServeError:
    """The request does not match the protocol or the model's metadata (400)."""
    return ServeError(ErrorCode.BAD_REQUEST, message)


def choose(inputs: Mapping[str, Tensor], accepted: Sequence[frozenset[str]], usage: str) -> frozenset[str]:
    """The accepted set of input names the request sent, or a 400 that says what the model takes."""
    names = frozenset(inputs)
    if names not in accepted:
        raise bad(f"inputs {sorted(names)} do not fit this model; it takes {usage}")
    return names


def check(tensor: Tensor, datatype: str, ranks: Sequence[int]) -> None:
    if tensor.datatype != datatype:
        raise bad(f"input {tensor.name!r} must be {datatype}, got {tensor.datatype}")
    if len(tensor.shape) not in ranks or (tensor.shape and tensor.shape[0] == 0):
        raise bad(f"input {tensor.name!r} has shape {tensor.shape}; expected {_shapes(ranks)} with at least one row")


def _shapes(ranks: Sequence[int]) -> str:
    return " or ".join(str(["N", *["..."] * (r - 1)]).replace("'", "") for r in ranks)


def elements(tensor: Tensor) -> list[bytes]:
    """The rows of a BYTES tensor of shape [N] or [N, 1]."""
    check(tensor, "BYTES", (1, 2))
    if len(tensor.shape) == 2 and tensor.shape[1] != 1:
        raise bad(f"input {tensor.name!r} has shape {tensor.shape}; one element per row: [N] or [N, 1]")
    return list(tensor.array.reshape(-1))


TEXT_TYPES = frozenset({"str"})  # KServe content types of text elements
FILE_TYPES = frozenset({"base64", "pillow_image"})  # ... of encoded files, base64 in whatever transport


def _content_type(tensor: Tensor, accepted: frozenset[str]) -> None:
    if tensor.content_type is not None and tensor.content_type not in accepted:
        raise bad(
            f"input {tensor.name!r}: content_type {tensor.content_type!r} does not fit it; "
            f"it takes {' or '.join(repr(t) for t in sorted(accepted))}, or none"
        )


def strings(tensor: Tensor) -> list[str]:
    """UTF-8 text rows (content_type "str", or none)."""
    _content_type(tensor, TEXT_TYPES)
    out = []
    for i, value in enumerate(elements(tensor)):
        try:
            out.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise ServeError(ErrorCode.INVALID_INPUT, f"{tensor.name}[{i}] is not valid UTF-8 text") from None
    return out


def files(tensor: Tensor) -> list[bytes]:
    """Encoded files (images): raw bytes in the binary section and gRPC, base64 strings in JSON; base64 in any
    transport with content_type "base64" or "pillow_image" (KServe's and MLServer's names)."""
    _content_type(tensor, FILE_TYPES)
    rows = elements(tensor)
    if tensor.binary and tensor.content_type is None:
        return rows
    note = " (in JSON an encoded file is base64; or send it raw in the binary section)"
    return each(tensor.name, rows, lambda value: decode_base64(value, field="the file", note=note))


def each(name: str, values: Sequence[T], prepare: Callable[[T], R]) -> list[R]:
    """prepare(v) for each row of tensor `name`; an error names its row (`text[0]: ...`), a lone one too."""
    return prepare_each(values, prepare, name=name, name_single=True)


def plan_classifier(call: Call, rows: int, labels: Labels, options: Options, *, default_top_k: int) -> Planned:
    """Check the answer of a classifier's outputs (logits FP32 [N, C], labels BYTES [N, k]) before the model runs;
    returns the plan of `labels`."""
    top_k = min(options.top_k or default_top_k, len(labels))
    plan = Planned("BYTES", [rows, top_k], labels.entry_bytes, ranked=True)
    check_answer(
        call.limits,
        options,
        {"logits": Planned(options.float_datatype, [rows, len(labels)]), "labels": plan},
        label_bytes=labels.entry_bytes,
    )
    return plan


def classified(logits: torch.Tensor, labels: Labels, options: Options, plan: Planned) -> dict[str, Tensor]:
    """logits FP32 [N, C], and when asked, labels BYTES [N, k]: "score:index:label", best first."""
    out = {"logits": Tensor.from_torch("logits", logits, options.float_datatype)}
    if "labels" in options.wanted:
        scores = apply_function(logits.float(), options.function or labels.function)
        values, indexes = scores.topk(plan.shape[-1], dim=-1)
        texts = [
            f"{v:.7g}:{i}:{labels.names[i]}"
            for v, i in zip(values.reshape(-1).tolist(), indexes.reshape(-1).tolist(), strict=True)
        ]
        out["labels"] = Tensor.from_strings("labels", texts, values.shape)
    return out


def classification(tensor: Tensor, count: int, classes: Sequence[str] | None) -> Tensor:
    """Triton's classification extension: BYTES [..., n] "value:index[:label]" of the n highest values."""
    values, indexes = tensor.to_torch().float().topk(min(count, tensor.shape[-1]), dim=-1)
    pairs = zip(values.reshape(-1).tolist(), indexes.reshape(-1).tolist(), strict=True)
    texts = [f"{v:.7g}:{i}" + (f":{classes[i]}" if classes is not None else "") for v, i in pairs]
    return Tensor.from_strings(tensor.name, texts, values.shape)


def meta(name: str, datatype: str, *shape: int | None) -> TensorMetadata:
    """Metadata of one tensor; None dims (unknown before load) become -1."""
    return TensorMetadata(name=name, datatype=datatype, shape=[-1 if d is None else d for d in shape])
