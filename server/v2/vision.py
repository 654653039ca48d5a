"""Tensors of the vision models: image-classification, optical-flow, and video-autoencoding (refused).

Encoded files (BYTES) travel raw in the binary section, or base64 in JSON; any format Pillow reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from server.engine.serving import Call
from server.errors import ErrorCode, ServeError
from server.limits import ImageLimits, Limits
from server.media.image import probe_image
from server.tasks.image_classification import ImageClassificationRunner
from server.tasks.labels import DEFAULT_TOP_K
from server.tasks.optical_flow import check_sizes, decode_frame_pair, estimate_flow, flow_image_limits
from server.v2 import tensors as v2t
from server.v2.binary import Tensor
from server.v2.protocol import TensorMetadata

T = TypeVar("T")

IMAGE_USAGE = (
    "image (BYTES [N] or [N, 1], encoded files) or pixel_values (FP32 [N, 3, H, W], normalized as the "
    "image processor makes them; H, W: the model's input size, 224 for the DeepMind checkpoints)"
)

REFUSAL = (
    "video-autoencoding models take no tensors over this protocol: use POST /autoencode-video, which takes "
    "the video file, windows it into clips and answers labels and/or the reconstruction"
)


@dataclass(frozen=True)
class EncodedImage:
    """An image file whose header has been checked; decoded only when its turn comes."""

    data: bytes
    size: tuple[int, int]  # (width, height)


class ImageClassificationTensors:
    """Outputs: logits FP32 [N, C]; labels BYTES [N, k] "score:index:label" (k: top_k, default 5)."""

    classifiable = frozenset({"logits"})
    required = frozenset[str]()  # image, or pixel_values

    def inputs(self, runner: ImageClassificationRunner | None) -> list[TensorMetadata]:
        height, width = runner.pixel_size if runner else (None, None)
        return [v2t.meta("image", "BYTES", None), v2t.meta("pixel_values", "FP32", None, 3, height, width)]

    def outputs(self, runner: ImageClassificationRunner | None) -> list[TensorMetadata]:
        classes = len(runner.labels) if runner else None
        return [v2t.meta("logits", "FP32", None, classes), v2t.meta("labels", "BYTES", None, None)]

    def parse(self, inputs: Mapping[str, Tensor], limits: Limits) -> list[EncodedImage] | list[torch.Tensor]:
        """Image files with checked headers, or (3, H, W) pixel tensors."""
        names = v2t.choose(inputs, (frozenset({"image"}), frozenset({"pixel_values"})), IMAGE_USAGE)
        if names == {"image"}:
            return v2t.each("image", v2t.files(inputs["image"]), partial(_probed, limits=limits.image))
        pixels = inputs["pixel_values"]
        v2t.check(pixels, "FP32", (4,))
        return list(pixels.to_torch().unbind(0))

    async def infer(self, call: Call, rows: Sequence[Any], options: v2t.Options) -> dict[str, Tensor]:
        runner = call.runner_as(ImageClassificationRunner)
        plan = v2t.plan_classifier(call, len(rows), runner.labels, options, default_top_k=DEFAULT_TOP_K)
        if isinstance(rows[0], torch.Tensor):
            items = await run_in_threadpool(v2t.each, "pixel_values", rows, runner.prepare_pixels)
        else:  # one file at a time, each shrunk to the model's pixels as soon as it is decoded
            items = [
                await call.decode(_row, "image", i, runner.prepare_file, row.data, call.limits.image)
                for i, row in enumerate(rows)
            ]
        return v2t.classified(torch.stack(await call.infer(items)), runner.labels, options, plan)  # logits (N, C)

    def classes(self, runner: ImageClassificationRunner, output: str) -> list[str] | None:
        return list(runner.labels.names) if output == "logits" else None


class OpticalFlowTensors:
    """Inputs: frame1, frame2 BYTES [N] or [N, 1] (encoded files, one size for all frames).
    Output: flow FP32 [N, H, W, 2] in pixels from frame1 to frame2 ([..., 0] right +, [..., 1] down +)."""

    classifiable = frozenset[str]()
    required = frozenset({"frame1", "frame2"})

    def inputs(self, runner: Any | None) -> list[TensorMetadata]:
        return [v2t.meta("frame1", "BYTES", None), v2t.meta("frame2", "BYTES", None)]

    def outputs(self, runner: Any | None) -> list[TensorMetadata]:
        return [v2t.meta("flow", "FP32", None, None, None, 2)]

    def parse(self, inputs: Mapping[str, Tensor], limits: Limits) -> list[tuple[EncodedImage, EncodedImage]]:
        """Frame pairs whose headers are checked: one size for every frame, within the flow route's limits."""
        v2t.choose(inputs, (frozenset({"frame1", "frame2"}),), "frame1 and frame2 (BYTES [N] or [N, 1], encoded files)")
        first, second = v2t.files(inputs["frame1"]), v2t.files(inputs["frame2"])
        if len(first) != len(second):
            raise v2t.bad(f"frame1 has {len(first)} rows, frame2 has {len(second)}; send one frame2 per frame1")
        probe = partial(_probed, limits=flow_image_limits(limits))
        pairs = list(zip(v2t.each("frame1", first, probe), v2t.each("frame2", second, probe), strict=True))
        sizes = {frame.size for pair in pairs for frame in pair}
        if len(sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
            raise ServeError(
                ErrorCode.INVALID_INPUT,
                f"frames have different sizes ({shown}); the flow tensor "
                "[N, H, W, 2] needs one size for every frame of a request",
            )
        check_sizes(pairs[0][0].size, pairs[0][1].size, limits.max_flow_side)
        return pairs

    async def infer(self, call: Call, rows: Sequence[Any], options: v2t.Options) -> dict[str, Tensor]:
        width, height = rows[0][0].size
        v2t.check_answer(
            call.limits, options, {"flow": v2t.Planned(options.float_datatype, [len(rows), height, width, 2])}
        )
        limits = flow_image_limits(call.limits)

        async def one(first: EncodedImage, second: EncodedImage) -> np.ndarray:
            frame1, frame2 = await decode_frame_pair(call.decode, first.data, second.data, limits)
            return await estimate_flow(call, frame1, frame2)

        try:
            async with asyncio.TaskGroup() as group:  # pairs run concurrently; their tiles share batches
                tasks = [group.create_task(one(f1, f2)) for f1, f2 in rows]
        except ExceptionGroup as failed:  # the first failure cancelled the other pairs
            raise failed.exceptions[0] from None
        flow = torch.stack([torch.from_numpy(t.result()) for t in tasks])  # (N, H, W, 2)
        return {"flow": Tensor.from_torch("flow", flow, options.float_datatype)}

    def classes(self, runner: Any, output: str) -> list[str] | None:
        return None


def _probed(data: bytes, limits: ImageLimits) -> EncodedImage:
    return EncodedImage(data, probe_image(data, limits))


def _row(name: str, index: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(...), an error naming the row of its tensor (`image[2]: ...`)."""
    try:
        return fn(*args, **kwargs)
    except ServeError as exc:
        raise ServeError(exc.code, f"{name}[{index}]: {exc.message}", retry_after=exc.retry_after) from None


class VideoAutoencodingTensors:
    """Listed, not served over tensors: /autoencode-video decodes a video file of any length, cuts it into the
    model's 16-frame windows, and answers labels per window and/or a reconstruction decoded chunk by chunk
    (optionally as a background job). One request of fixed-shape tensors fits none of that."""

    classifiable = frozenset[str]()
    required = frozenset[str]()

    def inputs(self, runner: Any | None) -> list[TensorMetadata]:
        return []

    def outputs(self, runner: Any | None) -> list[TensorMetadata]:
        return []

    def parse(self, inputs: Mapping[str, Tensor], limits: Limits) -> list[Any]:
        raise v2t.bad(REFUSAL)

    async def infer(self, call: Call, rows: Sequence[Any], options: v2t.Options) -> dict[str, Tensor]:
        raise v2t.bad(REFUSAL)

    def classes(self, runner: Any, output: str) -> list[str] | None:
        return None
