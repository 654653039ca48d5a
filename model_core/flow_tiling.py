"""Optical flow for frames of any size from a model that takes one fixed size (its train_size).

As in the DeepMind optical-flow colab (`compute_grid_indices`, `compute_optical_flow`): tiles of
the model's size step across the frame by (tile - min_overlap), the last row and column of tiles
sit flush with the far edges, each tile's flow is weighted by a pyramid w(y, x) = min(x + 1,
W_t - x, y + 1, H_t - y) (1 on the tile border, largest at its centre) and the frame's flow is
sum(w * flow) / sum(w) over the tiles covering each pixel.

Two departures from the colab, both where its grid is not usable as written: repeated corners
are removed (a frame of exactly one tile gets one tile, not four), and a start that would push a
tile past the far edge is pulled back to the flush position (the colab's 1920-px-wide grid has a
tile at x = 1428 whose 496 columns end at 1924). Wherever the colab's grid fits in the frame,
the corners here are the same.

Frames smaller than a tile are upscaled first (`cover_size`) and the flow scaled back
(`resize_flow`). Sizes are (height, width) throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Size = tuple[int, int]  # (height, width)
Corner = tuple[int, int]  # (y, x) of a tile's top-left pixel

TRAIN_SIZE: Size = (368, 496)  # deepmind/optical-flow-perceiver
MIN_OVERLAP = 20


def tile_starts(length: int, tile: int, min_overlap: int = MIN_OVERLAP) -> list[int]:
    """Start offsets along one axis: every (tile - min_overlap), the last flush with the end, sorted, unique."""
    if not 0 <= min_overlap < tile:
        raise ValueError(f"min_overlap must be in [0, {tile}) for tiles of {tile}, got {min_overlap}")
    if length < tile:
        raise ValueError(f"a side of {length} px is smaller than the {tile}-px tile; upscale it first (cover_size)")
    last = length - tile
    return sorted({min(start, last) for start in range(0, length, tile - min_overlap)} | {last})


def tile_grid(height: int, width: int, tile: Size = TRAIN_SIZE, min_overlap: int = MIN_OVERLAP) -> list[Corner]:
    """Top-left corners of the tiles covering a height x width frame, row by row."""
    ys = tile_starts(height, tile[0], min_overlap)
    xs = tile_starts(width, tile[1], min_overlap)
    return [(y, x) for y in ys for x in xs]


def tile_weights(tile: Size) -> torch.Tensor:
    """(H_t, W_t) float32 pyramid: min(x + 1, W_t - x, y + 1, H_t - y)."""
    height, width = tile
    y = torch.arange(height)
    x = torch.arange(width)
    wy = torch.minimum(y + 1, height - y)  # (H_t,)
    wx = torch.minimum(x + 1, width - x)  # (W_t,)
    return torch.minimum(wy[:, None], wx[None, :]).to(torch.float32)  # (H_t, W_t)


class FlowStitcher:
    """Accumulates sum(w * flow) and sum(w) over a frame, tile by tile, in float32 on the CPU."""

    def __init__(self, *, height: int, width: int, tile: Size = TRAIN_SIZE, channels: int = 2) -> None:
        self.tile = tile
        self.weights = tile_weights(tile)  # (H_t, W_t)
        self.weighted = torch.zeros(height, width, channels)  # (H, W, C)
        self.total = torch.zeros(height, width)  # (H, W)

    def add(self, corner: Corner, flow: torch.Tensor) -> None:
        """flow: (H_t, W_t, C), the tile at `corner`."""
        (y, x), (h, w) = corner, self.tile
        if tuple(flow.shape[:2]) != self.tile:
            raise ValueError(f"tile flow has shape {tuple(flow.shape)}, expected {self.tile} x C")
        if y < 0 or x < 0 or y + h > self.total.shape[0] or x + w > self.total.shape[1]:
            raise ValueError(f"a tile at {corner} does not fit in a {tuple(self.total.shape[:2])} frame")
        self.weighted[y : y + h, x : x + w].addcmul_(flow.to(torch.float32), self.weights[..., None])
        self.total[y : y + h, x : x + w] += self.weights

    def result(self) -> torch.Tensor:
        """(H, W, C): the weighted mean of the tiles over every pixel."""
        if not bool((self.total > 0).all()):
            raise ValueError("the tiles added do not cover the whole frame")
        return self.weighted / self.total[..., None]


def stitch(corners: list[Corner], flows: torch.Tensor | list[torch.Tensor], size: Size) -> torch.Tensor:
    """Tile flows (N x (H_t, W_t, C)) at `corners` -> the frame's (H, W, C) flow."""
    if len(corners) != len(flows) or not corners:
        raise ValueError(f"{len(corners)} corners for {len(flows)} tile flows")
    first = flows[0]
    tile, channels = (first.shape[0], first.shape[1]), first.shape[2]
    stitcher = FlowStitcher(height=size[0], width=size[1], tile=tile, channels=channels)
    for corner, flow in zip(corners, flows, strict=True):
        stitcher.add(corner, flow)
    return stitcher.result()


def cover_size(height: int, width: int, tile: Size = TRAIN_SIZE) -> Size:
    """The size to run a frame at: unchanged if it covers a tile, else the smallest uniform upscale
    that does (aspect ratio kept, so the model sees undistorted motion)."""
    if height < 1 or width < 1:
        raise ValueError(f"frames must have positive sides, got {height}x{width}")
    if height >= tile[0] and width >= tile[1]:
        return height, width
    scale = max(tile[0] / height, tile[1] / width)
    return max(tile[0], round(height * scale)), max(tile[1], round(width * scale))


def resize_flow(flow: torch.Tensor, size: Size) -> torch.Tensor:
    """(h, w, 2) flow in pixels of an h x w frame -> (H, W, 2) in pixels of the H x W frame.

    Bilinear (antialiased when shrinking); channel 0 (horizontal) is scaled by W / w, channel 1
    (vertical) by H / h.
    """
    height, width = flow.shape[0], flow.shape[1]
    if (height, width) == tuple(size):
        return flow
    planes = flow.to(torch.float32).permute(2, 0, 1)[None]  # (1, 2, h, w)
    resized = F.interpolate(planes, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    factors = torch.tensor([size[1] / width, size[0] / height], dtype=torch.float32)
    return resized[0].permute(1, 2, 0) * factors  # (H, W, 2)
