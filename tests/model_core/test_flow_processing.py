"""Optical-flow input preparation vs transformers' integration-test recipe."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch

from model_core.flow_processing import (
    extract_patches,
    frame_pair_inputs,
    frame_pairs_inputs,
    normalize_frame,
)


# --- Oracle: transcribed from transformers tests/models/perceiver/test_modeling_perceiver.py
def _hf_normalize(img):
    return img / 255.0 * 2 - 1


def _hf_extract_image_patches(x, kernel, stride=1, dilation=1):
    b, c, h, w = x.shape
    h2 = math.ceil(h / stride)
    w2 = math.ceil(w / stride)
    pad_row = (h2 - 1) * stride + (kernel - 1) * dilation + 1 - h
    pad_col = (w2 - 1) * stride + (kernel - 1) * dilation + 1 - w
    pad = (pad_row // 2, pad_row - pad_row // 2, pad_col // 2, pad_col - pad_col // 2)
    x = torch.nn.functional.pad(x, pad)
    patches = x.unfold(2, kernel, stride).unfold(3, kernel, stride)
    patches = patches.permute(0, 4, 5, 1, 2, 3).contiguous()
    return patches.view(b, -1, patches.shape[-2], patches.shape[-1])


def _hf_inputs(frame1: np.ndarray, frame2: np.ndarray) -> torch.Tensor:
    img1 = torch.tensor(np.moveaxis(_hf_normalize(frame1), -1, 0))
    img2 = torch.tensor(np.moveaxis(_hf_normalize(frame2), -1, 0))
    inputs = torch.stack([img1, img2], dim=0).unsqueeze(0)
    batch_size, _, c, h, w = inputs.shape
    patches = _hf_extract_image_patches(inputs.view(batch_size * 2, c, h, w), kernel=3)
    _, c, h, w = patches.shape
    return patches.view(batch_size, -1, c, h, w).float()


def _frames(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_normalize_frame_range_and_layout():
    frame = np.array([[[0, 128, 255]]], dtype=np.uint8)
    out = normalize_frame(frame)
    assert out.shape == (3, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([-1.0, 128 / 255 * 2 - 1, 1.0])
    f1, _ = _frames(20, 30, 0)
    values = normalize_frame(f1)
    assert values.min() >= -1 and values.max() <= 1
    assert torch.equal(values, torch.from_numpy(np.moveaxis(_hf_normalize(f1), -1, 0)).float())


@pytest.mark.parametrize("hw", [(368, 496), (17, 33), (1, 1)])
def test_frame_pair_matches_hf_recipe(hw):
    f1, f2 = _frames(*hw, seed=1)
    out = frame_pair_inputs(f1, f2)
    assert out.shape == (1, 2, 27, *hw) and out.dtype == torch.float32
    assert torch.equal(out, _hf_inputs(f1, f2))
    assert out.min() >= -1 and out.max() <= 1


def test_pil_frames_accepted():
    f1, f2 = _frames(12, 16, 2)
    out = frame_pair_inputs(PIL.Image.fromarray(f1), PIL.Image.fromarray(f2).convert("RGBA"))
    assert torch.equal(out, _hf_inputs(f1, f2))


def test_batched_pairs():
    pairs = [_frames(10, 14, seed) for seed in range(3)]
    frames1 = np.stack([p[0] for p in pairs])
    frames2 = np.stack([p[1] for p in pairs])
    out = frame_pairs_inputs(frames1, frames2)
    assert out.shape == (3, 2, 27, 10, 14)
    for i, (f1, f2) in enumerate(pairs):
        assert torch.equal(out[i : i + 1], _hf_inputs(f1, f2))
    assert torch.equal(frame_pairs_inputs(list(frames1), list(frames2)), out)


def test_extract_patches_matches_hf_any_channels():
    x = torch.randn(4, 5, 9, 7)
    assert torch.equal(extract_patches(x), _hf_extract_image_patches(x, kernel=3))


def test_channel_order_is_ky_kx_c():
    # Pixel (y, x) channel c holds 100*y + 10*x + c; the 1-px border is zero-padded.
    h, w = 4, 5
    ys, xs, cs = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    image = torch.from_numpy((100 * ys + 10 * xs + cs).astype(np.float32)).permute(2, 0, 1)[None]
    patches = extract_patches(image)
    assert patches.shape == (1, 27, h, w)
    y, x = 2, 3
    for ky in range(3):
        for kx in range(3):
            for c in range(3):
                expected = 100 * (y + ky - 1) + 10 * (x + kx - 1) + c
                assert patches[0, (ky * 3 + kx) * 3 + c, y, x].item() == expected
    # Top-left pixel: its up/left neighbours are padding zeros; the centre is itself.
    assert patches[0, :9, 0, 0].tolist() == [0.0] * 9
    assert patches[0, 12:15, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_errors():
    f1, _ = _frames(8, 8, 3)
    with pytest.raises(ValueError, match="differ"):
        frame_pair_inputs(f1, f1[:4])
    with pytest.raises(TypeError):
        frame_pair_inputs(f1.astype(np.float32), f1)
    with pytest.raises(ValueError):
        frame_pair_inputs(f1[..., :2], f1[..., :2])
    with pytest.raises(ValueError):
        extract_patches(torch.zeros(3, 8, 8))
