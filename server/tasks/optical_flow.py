"""optical-flow: a frame pair -> tiles of the model's train_size -> flow per tile -> stitched (H, W, 2) in pixels.

Each tile is one batcher item (key: its shape), so the tiles of one request and of concurrent
requests share batches. Items stay uint8 until they reach the model's device, where they are
normalised and cut into 3x3 patches (27 channels per pixel). Frames smaller than a tile are
upscaled (aspect ratio kept) to cover one and the flow is scaled back. See model_core.flow_tiling
for the grid and the blending.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool

from model_core import PerceiverForTask
from model_core.flow_processing import extract_patches, normalize_frame
from model_core.flow_tiling import Corner, Size, cover_size, resize_flow, stitch, tile_grid
from model_core.presets import FlowProcessing
from server.errors import ErrorCode, ServeError
from server.limits import DEFAULT_LIMITS, ImageLimits, Limits
from server.media.image import decode_image, probe_image

T = TypeVar("T")
Decoder = Callable[..., Awaitable[Any]]

FRAMES = ("frame1", "frame2")
FLOW_SCALE = FlowProcessing().flow_scale  # model output -> pixels (the DeepMind colab's FLOW_SCALE_FACTOR)


@dataclass(frozen=True)
class FlowPlan:
    """One frame pair cut into tiles. `tiles[i]` is (2, H_t, W_t, 3) uint8, a view of the run-size frames."""

    size: Size  # the frames' (H, W)
    run_size: Size  # (H, W) the model sees them at: `size`, or upscaled to cover one tile
    corners: list[Corner]
    tiles: list[torch.Tensor]


class OpticalFlowRunner:
    def __init__(
        self,
        model: PerceiverForTask,
        *,
        device: torch.device,
        dtype: torch.dtype,
        max_side: int = DEFAULT_LIMITS.max_flow_side,
    ) -> None:
        self.model, self.device, self.dtype, self.max_side = model, device, dtype, max_side
        height, width = model.config.train_size
        self.tile: Size = (int(height), int(width))

    def plan(self, frame1: np.ndarray, frame2: np.ndarray) -> FlowPlan:
        """Check the pair ((H, W, 3) uint8 each), upscale it if smaller than a tile, cut it. CPU work: call off
        the event loop."""
        size = (frame1.shape[0], frame1.shape[1])
        check_sizes(size[::-1], (frame2.shape[1], frame2.shape[0]), self.max_side)
        run_size = cover_size(*size, tile=self.tile)
        if max(run_size) > self.max_side:
            raise ServeError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                (
                    f"frames of {_wxh(size[::-1])} are too elongated: covering one {_wxh(self.tile[::-1])} model "
                    f"tile would upscale them to {_wxh(run_size[::-1])}, beyond {self.max_side}x{self.max_side} "
                    "(max_flow_side)"
                ),
            )
        pair = torch.stack([_pixels(f, run_size) for f in (frame1, frame2)])  # (2, H, W, 3) uint8
        corners = tile_grid(*run_size, tile=self.tile)
        th, tw = self.tile
        tiles = [pair[:, y : y + th, x : x + tw] for y, x in corners]
        return FlowPlan(size, run_size, corners, tiles)

    def key(self, tile: torch.Tensor) -> tuple[int, ...]:
        return tuple(tile.shape)

    def collate(self, tiles: Sequence[torch.Tensor]) -> torch.Tensor:
        pixels = torch.stack(list(tiles)).to(self.device)  # (B, 2, H_t, W_t, 3) uint8: copied as bytes
        pairs = normalize_frame(pixels).to(self.dtype)  # (B, 2, 3, H_t, W_t) in [-1, 1], on the device
        batch, _, _, height, width = pairs.shape
        pairs = pairs.view(batch * 2, 3, height, width)
        return extract_patches(pairs).view(batch, 2, 27, height, width)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs).logits  # (B, H_t, W_t, 2), flow / FLOW_SCALE

    def split(self, logits: torch.Tensor, tiles: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(logits.float().cpu().unbind(0))  # (H_t, W_t, 2) each

    def stitch(self, plan: FlowPlan, logits: Sequence[torch.Tensor]) -> np.ndarray:
        """Tile outputs -> (H, W, 2) float32 flow in pixels of the frames as sent. CPU work."""
        flow = stitch(plan.corners, list(logits), plan.run_size) * FLOW_SCALE  # (H_run, W_run, 2)
        return resize_flow(flow, plan.size).numpy()  # (H, W, 2)


def check_sizes(size1: tuple[int, int], size2: tuple[int, int], max_side: int) -> None:
    """The checks that need no model, on (width, height) from the files' headers: one size for both frames, at
    most `max_side` on a side (the tile count, the cost, grows with the area)."""
    if size1 != size2:
        raise ServeError(
            ErrorCode.INVALID_INPUT,
            (f"frame1 is {_wxh(size1)} but frame2 is {_wxh(size2)}; the frames must be the same size"),
        )
    if max(size1) > max_side:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            (f"frames are {_wxh(size1)}; optical flow takes frames of at most {max_side}x{max_side} (max_flow_side)"),
        )


def check_answer(
    limits: Limits,
    size: tuple[int, int],
    *,
    pairs: int = 1,
    value_bytes: float = 4.0,
    hint: str = "send smaller frames",
) -> None:
    """Refuse (413) flow fields of `pairs` frame pairs of `size` (width, height) whose answer, at `value_bytes` per
    flow value as sent, would be over `max_response_mb`, before any frame is decoded."""
    values = pairs * size[0] * size[1] * 2
    what = f"{pairs} flow field(s) of {_wxh(size)}" if pairs > 1 else f"a flow field of {_wxh(size)}"
    limits.check_answer(int(values * value_bytes) + 1024, what, hint)


def flow_image_limits(limits: Limits) -> ImageLimits:
    """The image limits of a flow frame: the server's, and at most max_flow_side squared pixels."""
    return ImageLimits(min(limits.image.max_pixels, limits.max_flow_side**2), limits.image.formats)


def decode_frame(data: bytes, limits: ImageLimits) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB: the decoded image is kept as its bare pixels, nothing more. CPU work:
    call off the event loop (one decode unit)."""
    return np.asarray(decode_image(data, limits))


def probe_frames(data1: bytes, data2: bytes, limits: Limits) -> tuple[int, int]:
    """(width, height) of the pair from the files' headers (format and pixels checked; one size for both, at
    most max_flow_side a side); an error names the frame. Nothing is decoded."""
    frames = flow_image_limits(limits)
    sizes = [_named(name, probe_image, data, frames) for name, data in zip(FRAMES, (data1, data2), strict=True)]
    check_sizes(sizes[0], sizes[1], limits.max_flow_side)
    return sizes[0]


async def decode_frame_pair(
    decode: Decoder, data1: bytes, data2: bytes, limits: ImageLimits
) -> tuple[np.ndarray, np.ndarray]:
    """Both frames as (H, W, 3) uint8, one decode unit each (`decode` runs a function as one)."""
    first = await decode(_named, FRAMES[0], decode_frame, data1, limits)
    second = await decode(_named, FRAMES[1], decode_frame, data2, limits)
    return first, second


def _named(name: str, fn: Callable[[bytes, ImageLimits], T], data: bytes, limits: ImageLimits) -> T:
    try:
        return fn(data, limits)
    except ServeError as exc:
        raise ServeError(exc.code, f"{name}: {exc.message}", retry_after=exc.retry_after) from None


async def estimate_flow(call: Any, frame1: np.ndarray, frame2: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 flow from frame1 to frame2 in pixels: [..., 0] horizontal (right +), [..., 1]
    vertical (down +). `call` is what `service.open(request, Task.OPTICAL_FLOW, model)` yields."""
    runner: OpticalFlowRunner = call.runner
    plan = await run_in_threadpool(runner.plan, frame1, frame2)
    queue = call.entry.spec.max_queue
    if len(plan.tiles) > queue:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            (
                f"frames of {_wxh(plan.size[::-1])} need {len(plan.tiles)} model tiles; model "
                f"{call.entry.spec.name!r} queues at most {queue}"
            ),
        )
    logits = await call.infer(plan.tiles)
    return await run_in_threadpool(runner.stitch, plan, logits)


def _pixels(frame: np.ndarray, size: Size) -> torch.Tensor:
    """(H, W, 3) uint8 RGB at `size` (bilinear when it differs from the frame's)."""
    if frame.shape[:2] != size:
        frame = np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return torch.from_numpy(np.array(frame))


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
