"""Tiling and stitching of optical flow: the DeepMind colab's grid and pyramid blending."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model_core import from_config
from model_core.flow_processing import frame_pair_inputs
from model_core.flow_tiling import (
    FlowStitcher,
    cover_size,
    resize_flow,
    stitch,
    tile_grid,
    tile_starts,
    tile_weights,
)

TRAIN = (368, 496)
SMALL = (48, 64)  # the test checkpoint's train_size


def colab_grid(height: int, width: int, patch: tuple[int, int], min_overlap: int = 20) -> list[tuple[int, int]]:
    """Transcribed from the DeepMind optical-flow colab's compute_grid_indices (without its size check)."""
    ys = list(range(0, height, patch[0] - min_overlap))
    xs = list(range(0, width, patch[1] - min_overlap))
    ys[-1] = height - patch[0]
    xs[-1] = width - patch[1]
    return list(itertools.product(ys, xs))


@pytest.mark.parametrize(
    "size, corners",
    [
        ((436, 1024), [(0, 0), (0, 476), (0, 528), (68, 0), (68, 476), (68, 528)]),  # Sintel
        ((375, 1242), [(0, 0), (0, 476), (0, 746), (7, 0), (7, 476), (7, 746)]),  # KITTI
        ((480, 640), [(0, 0), (0, 144), (112, 0), (112, 144)]),
        ((368, 496), [(0, 0)]),  # the colab lists (0, 0) four times
    ],
)
def test_grid_of_known_frame_sizes(size: tuple[int, int], corners: list[tuple[int, int]]) -> None:
    assert tile_grid(*size, tile=TRAIN) == corners


def test_full_hd_grid_keeps_every_tile_inside_the_frame() -> None:
    # The colab's 1080x1920 grid has 4 x 5 = 20 tiles, but its x = 1428 column ends at 1924 > 1920:
    # pulled back to the flush x = 1424 it repeats the last column, so 4 x 4 tiles remain.
    colab = colab_grid(1080, 1920, TRAIN)
    assert len(colab) == 20 and max(x for _, x in colab) + TRAIN[1] > 1920
    grid = tile_grid(1080, 1920, tile=TRAIN)
    assert len(grid) == 16
    assert sorted({y for y, _ in grid}) == [0, 348, 696, 712]
    assert sorted({x for _, x in grid}) == [0, 476, 952, 1424]


@pytest.mark.parametrize("tile", [TRAIN, SMALL])
def test_grid_is_the_colabs_wherever_the_colabs_fits(tile: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for height, width in rng.integers(1, 6, (300, 2)) * np.array(tile) // 2 + rng.integers(0, 40, (300, 2)):
        if height < tile[0] or width < tile[1]:
            continue
        colab = colab_grid(int(height), int(width), tile)
        if all(y + tile[0] <= height and x + tile[1] <= width for y, x in colab):
            assert tile_grid(int(height), int(width), tile=tile) == list(dict.fromkeys(colab))
            checked += 1
    assert checked > 40  # seeded: the same sizes every run


def test_starts_cover_the_axis_with_the_minimum_overlap() -> None:
    for tile, extra in itertools.product((48, 64, 368, 496), range(0, 1500, 7)):
        starts = tile_starts(tile + extra, tile, 20)
        assert starts[0] == 0 and starts[-1] == extra  # flush with both ends
        assert starts == sorted(set(starts))
        assert all(b - a <= tile - 20 for a, b in itertools.pairwise(starts))  # >= 20 px shared, no gap


def test_grid_refuses_frames_smaller_than_a_tile() -> None:
    with pytest.raises(ValueError, match="cover_size"):
        tile_grid(300, 1000, tile=TRAIN)
    with pytest.raises(ValueError, match="min_overlap"):
        tile_grid(100, 100, tile=(40, 40), min_overlap=40)


def test_weights_are_the_pyramid() -> None:
    weights = tile_weights(TRAIN)
    assert weights.shape == TRAIN and weights.dtype == torch.float32
    assert weights[0].eq(1).all() and weights[-1].eq(1).all() and weights[:, 0].eq(1).all()
    assert weights.max() == 184 and weights[183, 248] == 184
    assert weights[5, 100] == 6 and weights[100, 490] == 6  # min(y + 1, ...), min(..., W_t - x)
    assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.flip(1))


@pytest.mark.parametrize("size", [(436, 1024), (1080, 1920), (368, 496), (369, 497), (700, 500)])
def test_tiles_give_every_pixel_positive_weight(size: tuple[int, int]) -> None:
    stitcher = FlowStitcher(height=size[0], width=size[1], tile=TRAIN)
    for corner in tile_grid(*size, tile=TRAIN):
        stitcher.add(corner, torch.zeros(*TRAIN, 2))
    assert bool((stitcher.total > 0).all())


def test_constant_flow_stitches_back_exactly() -> None:
    size = (1080, 1920)
    flows = torch.tensor([1.5, -2.25]).expand(len(tile_grid(*size, tile=TRAIN)), *TRAIN, 2)
    result = stitch(tile_grid(*size, tile=TRAIN), flows, size)
    assert result.shape == (*size, 2)
    assert torch.equal(result, torch.tensor([1.5, -2.25]).expand(*size, 2))
    generic = stitch(tile_grid(*size, tile=TRAIN), torch.full((16, *TRAIN, 2), 0.1).unbind(0), size)
    assert float((generic - 0.1).abs().max()) <= 1e-7  # 0.1 is not a float32: rounding only


def test_overlap_is_the_weighted_mean_by_hand() -> None:
    # 3 x 4 frame, 3 x 3 tiles overlapping by 2: starts x = 0 and 1; the middle row weighs [1, 2, 1].
    assert tile_grid(3, 4, tile=(3, 3), min_overlap=2) == [(0, 0), (0, 1)]
    a, b = torch.full((3, 3, 1), 3.0), torch.full((3, 3, 1), 6.0)
    result = stitch([(0, 0), (0, 1)], [a, b], (3, 4))[..., 0]
    assert result[1].tolist() == pytest.approx([3.0, (2 * 3 + 1 * 6) / 3, (1 * 3 + 2 * 6) / 3, 6.0])
    assert result[0].tolist() == pytest.approx([3.0, 4.5, 4.5, 6.0])


def test_stitcher_refuses_uncovered_frames_and_misplaced_tiles() -> None:
    stitcher = FlowStitcher(height=60, width=64, tile=SMALL)
    stitcher.add((0, 0), torch.zeros(*SMALL, 2))
    with pytest.raises(ValueError, match="cover"):
        stitcher.result()
    with pytest.raises(ValueError, match="does not fit"):
        stitcher.add((13, 0), torch.zeros(*SMALL, 2))


def test_frame_of_one_tile_is_one_direct_model_call() -> None:
    config = {
        "architectures": ["PerceiverForOpticalFlow"],
        "num_latents": 8,
        "d_latents": 32,
        "num_blocks": 1,
        "num_self_attends_per_block": 1,
        "num_self_attention_heads": 2,
        "num_cross_attention_heads": 1,
        "train_size": list(SMALL),
    }
    model = from_config(config, device="cpu", dtype=torch.float32, seed=0)
    rng = np.random.default_rng(1)
    frame1, frame2 = (rng.integers(0, 256, (*SMALL, 3), dtype=np.uint8) for _ in range(2))
    corners = tile_grid(*SMALL, tile=SMALL)
    assert corners == [(0, 0)]
    with torch.inference_mode():
        direct = model(frame_pair_inputs(frame1, frame2)).logits[0] * 20  # (48, 64, 2)
        y, x = corners[0]
        tile = model(frame_pair_inputs(frame1[y : y + 48, x : x + 64], frame2[y : y + 48, x : x + 64])).logits[0] * 20
    stitched = stitch(corners, [tile], SMALL)
    assert direct.abs().max() > 0
    torch.testing.assert_close(stitched, direct, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "size, tile, expected",
    [
        ((24, 50), SMALL, (48, 100)),  # height limits: x2
        ((30, 40), SMALL, (48, 64)),  # both sides x1.6
        ((100, 30), SMALL, (213, 64)),  # width limits: x64/30
        ((240, 320), TRAIN, (372, 496)),  # QVGA: x1.55
        ((436, 1024), TRAIN, (436, 1024)),  # covers a tile: unchanged
        ((368, 496), TRAIN, (368, 496)),
    ],
)
def test_small_frames_are_upscaled_to_cover_a_tile_keeping_aspect(size, tile, expected) -> None:
    assert cover_size(*size, tile=tile) == expected
    height, width = expected
    assert height >= tile[0] and width >= tile[1]


def test_resize_flow_scales_each_axis_by_its_own_factor() -> None:
    flow = torch.tensor([3.0, 5.0]).expand(48, 96, 2)
    resized = resize_flow(flow, (24, 32))  # width / 3, height / 2
    assert resized.shape == (24, 32, 2)
    torch.testing.assert_close(resized, torch.tensor([1.0, 2.5]).expand(24, 32, 2))
    ramp = torch.stack(torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")[::-1], -1)
    assert resize_flow(ramp, (48, 64)) is ramp
