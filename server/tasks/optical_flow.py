"""optical-flow: a frame pair -> tiles of the model's train_size -> flow per tile -> stitched (H, W, 2) in pixels.

Each tile is one batcher item (key: its shape), so the tiles of one request and of concurrent
requests share batches; a batch runs as forward passes of at most `tiles_per_pass` tiles, as many as
an activation-memory budget holds (flow_budget_mb). Items stay uint8 until they reach the model's
device, where they are normalised and cut into 3x3 patches (27 channels per pixel). Frames smaller
than a tile are upscaled (aspect ratio kept) to cover one and the flow is scaled back. See
model_core.flow_tiling for the grid and the blending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool

from model_core import PerceiverForTask
from model_core.decoders import OpticalFlowDecoder
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
FLOW_BUDGET_BYTES = DEFAULT_LIMITS.flow_budget_bytes  # activations of one forward pass, all its tiles
Progress = Callable[[int, int], None]  # (tiles done, tiles in all)


def tile_activation_bytes(model: PerceiverForTask, tile: Size, *, element_size: int) -> int:
    """Activation bytes of one tile at a forward pass's high-water mark, from the model's widths.

    Attention runs through the fused kernels (no scores held), so a pass holds a few vectors per pixel: the
    preprocessed inputs (kept: they are the decoder's queries) and the largest of building them, the encoder's
    cross-attention (LayerNorm, keys, values) and the decoder's (LayerNorm, queries, heads out + merged, output
    projection). An over-estimate: the real flow model's tiles measured ~1.2 GB against 1.8 GB here."""
    perceiver = model.perceiver
    encoder = perceiver.encoder.cross_attention.attention.self
    if not isinstance(perceiver.decoder, OpticalFlowDecoder):
        raise TypeError("tile sizes are those of an optical-flow model")
    layer = perceiver.decoder.decoder.decoding_cross_attention
    decoder = layer.attention.self
    inputs = encoder.key.in_features
    build = 2 * inputs
    encode = inputs + encoder.key.out_features + encoder.value.out_features
    queries = decoder.query.in_features
    decode = 2 * queries + decoder.query.out_features + 2 * decoder.value.out_features
    per_pixel = inputs + max(build, encode, decode, queries + 2 * layer.mlp.dense1.out_features)
    return tile[0] * tile[1] * per_pixel * element_size


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
        budget_bytes: int = FLOW_BUDGET_BYTES,
    ) -> None:
        self.model, self.device, self.dtype, self.max_side = model, device, dtype, max_side
        height, width = model.config.train_size
        self.tile: Size = (int(height), int(width))
        element_size = torch.empty((), dtype=dtype).element_size()
        self.tile_bytes = tile_activation_bytes(model, self.tile, element_size=element_size)
        self.tiles_per_pass = max(1, budget_bytes // self.tile_bytes)

    def run_size(self, size: Size) -> Size:
        """(H, W) the model sees frames of `size` at: as they are, or upscaled to cover one tile; 413 when that
        would pass max_flow_side."""
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
        return run_size

    def tile_count(self, size: Size) -> int:
        """Tiles a frame pair of `size` (H, W) is cut into: a job's units of work."""
        return len(tile_grid(*self.run_size(size), tile=self.tile))

    def plan(self, frame1: np.ndarray, frame2: np.ndarray) -> FlowPlan:
        """Check the pair ((H, W, 3) uint8 each), upscale it if smaller than a tile, cut it. CPU work: call off
        the event loop."""
        size = (frame1.shape[0], frame1.shape[1])
        check_sizes(size[::-1], (frame2.shape[1], frame2.shape[0]), self.max_side)
        run_size = self.run_size(size)
        pair = torch.stack([_pixels(f, run_size) for f in (frame1, frame2)])  # (2, H, W, 3) uint8
        corners = tile_grid(*run_size, tile=self.tile)
        th, tw = self.tile
        tiles = [pair[:, y : y + th, x : x + tw] for y, x in corners]
        return FlowPlan(size, run_size, corners, tiles)

    def key(self, tile: torch.Tensor) -> tuple[int, ...]:
        return tuple(tile.shape)

    def collate(self, tiles: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(tiles))  # (B, 2, H_t, W_t, 3) uint8, on the host until its pass

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The batch's tiles, `tiles_per_pass` at a time (each pass's activations within the budget)."""
        step = self.tiles_per_pass
        return torch.cat([self._pass(pixels[i : i + step]) for i in range(0, len(pixels), step)])

    def _pass(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device)  # (b, 2, H_t, W_t, 3) uint8: copied as bytes
        pairs = normalize_frame(pixels).to(self.dtype)  # (b, 2, 3, H_t, W_t) in [-1, 1], on the device
        batch, _, _, height, width = pairs.shape
        pairs = pairs.view(batch * 2, 3, height, width)
        inputs = extract_patches(pairs).view(batch, 2, 27, height, width)
        return self.model(inputs).logits  # (b, H_t, W_t, 2), flow / FLOW_SCALE

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
) -> int:
    """Refuse (413) flow fields of `pairs` frame pairs of `size` (width, height) whose answer, at `value_bytes` per
    flow value as sent, would be over `max_response_mb`, before any frame is decoded. Returns the answer's most
    bytes (what a job's result needs kept)."""
    values = pairs * size[0] * size[1] * 2
    what = f"{pairs} flow field(s) of {_wxh(size)}" if pairs > 1 else f"a flow field of {_wxh(size)}"
    answer = int(values * value_bytes) + 1024
    limits.check_answer(answer, what, hint)
    return answer


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


def check_tiles(call: Any, size: Size, tiles: int) -> None:
    """Refuse (413) frames of `size` (H, W) cut into more tiles than the model's queue holds."""
    queue = call.entry.spec.max_queue
    if tiles > queue:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            (
                f"frames of {_wxh(size[::-1])} need {tiles} model tiles; model "
                f"{call.entry.spec.name!r} queues at most {queue}"
            ),
        )


async def estimate_flow(
    call: Any, frame1: np.ndarray, frame2: np.ndarray, progress: Progress | None = None
) -> np.ndarray:
    """(H, W, 2) float32 flow from frame1 to frame2 in pixels: [..., 0] horizontal (right +), [..., 1]
    vertical (down +). `call` is what `service.open(request, Task.OPTICAL_FLOW, model)` yields; `progress`, if
    given, hears of each tile as it finishes (a job's: each tile is then a unit with its own timeout)."""
    runner: OpticalFlowRunner = call.runner
    plan = await run_in_threadpool(runner.plan, frame1, frame2)
    check_tiles(call, plan.size, len(plan.tiles))
    if progress is None:
        logits = await call.infer(plan.tiles)
    else:
        logits = await _tile_by_tile(call, plan.tiles, progress)
    return await run_in_threadpool(runner.stitch, plan, logits)


async def _tile_by_tile(call: Any, tiles: list[torch.Tensor], progress: Progress) -> list[torch.Tensor]:
    """Every tile queued at once (they still share batches), each counted as it finishes; the first failure
    cancels the rest."""
    done, total = 0, len(tiles)
    progress(0, total)

    async def one(tile: torch.Tensor) -> torch.Tensor:
        nonlocal done
        [result] = await call.infer([tile])
        done += 1
        progress(done, total)
        return result

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(tile)) for tile in tiles]
    return [task.result() for task in tasks]


def _pixels(frame: np.ndarray, size: Size) -> torch.Tensor:
    """(H, W, 3) uint8 RGB at `size` (bilinear when it differs from the frame's)."""
    if frame.shape[:2] != size:
        frame = np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return torch.from_numpy(np.array(frame))


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
