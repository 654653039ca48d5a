"""Frame-pair inputs for PerceiverForOpticalFlow.

As in the DeepMind optical-flow colab and transformers' integration test: RGB
frames scaled to [-1, 1] (x / 255 * 2 - 1, no mean/std), then every pixel gets the
3x3 neighbourhood around it (1-px zero padding, stride 1) as 27 channels ordered
(ky, kx, c), TF `extract_patches` order. The model wants (B, 2, 27, H, W) with
H x W = 368 x 496 (its train_size); tiling larger frames is done elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

Frame = np.ndarray | PIL.Image.Image | torch.Tensor

# float64 x / 255 * 2 - 1 rounded once to float32: the values the HF test feeds the model.
_LUT = torch.from_numpy((np.arange(256, dtype=np.float64) / 255.0 * 2 - 1).astype(np.float32))


def _as_uint8_hwc(frame: Frame) -> torch.Tensor:
    """A (..., H, W, 3) uint8 tensor from a PIL image, array or tensor."""
    if isinstance(frame, PIL.Image.Image):
        frame = np.array(frame if frame.mode == "RGB" else frame.convert("RGB"))
    if isinstance(frame, np.ndarray) and not frame.flags.writeable:
        frame = frame.copy()  # torch.from_numpy warns on read-only arrays
    tensor = frame if isinstance(frame, torch.Tensor) else torch.from_numpy(np.asarray(frame))
    if tensor.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8, got {tensor.dtype}")
    if tensor.ndim < 3 or tensor.shape[-1] != 3:
        raise ValueError(f"frames must be (..., H, W, 3) RGB, got shape {tuple(tensor.shape)}")
    return tensor


def normalize_frame(frame: Frame) -> torch.Tensor:
    """uint8 (..., H, W, 3) RGB -> float32 (..., 3, H, W) in [-1, 1] (channels first), on the frame's device."""
    tensor = _as_uint8_hwc(frame)
    return _LUT.to(tensor.device)[tensor.long()].movedim(-1, -3).contiguous()  # (..., 3, H, W)


def extract_patches(frames: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 9C, H, W): 3x3 neighbourhoods, zero-padded, channels (ky, kx, c)."""
    if frames.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {tuple(frames.shape)}")
    _, _, height, width = frames.shape
    padded = F.pad(frames, (1, 1, 1, 1))
    shifted = [padded[:, :, ky : ky + height, kx : kx + width] for ky in range(3) for kx in range(3)]
    return torch.cat(shifted, dim=1)


def frame_pairs_inputs(
    frames1: np.ndarray | torch.Tensor | Sequence[Frame],
    frames2: np.ndarray | torch.Tensor | Sequence[Frame],
) -> torch.Tensor:
    """Batches of frames (B, H, W, 3) uint8 -> model inputs (B, 2, 27, H, W) float32."""
    first, second = _stack(frames1), _stack(frames2)
    if first.shape != second.shape:
        raise ValueError(f"frame shapes differ: {tuple(first.shape)} vs {tuple(second.shape)}")
    batch, height, width, _ = first.shape
    pairs = torch.stack([first, second], dim=1).reshape(batch * 2, height, width, 3)  # (2B, H, W, 3)
    patches = extract_patches(normalize_frame(pairs))
    return patches.view(batch, 2, 27, height, width)  # (B, 2, 27, H, W)


def frame_pair_inputs(frame1: Frame, frame2: Frame) -> torch.Tensor:
    """One pair of uint8 H x W x 3 frames (arrays or PIL images) -> (1, 2, 27, H, W)."""
    return frame_pairs_inputs([frame1], [frame2])


def _stack(frames: np.ndarray | torch.Tensor | Sequence[Frame]) -> torch.Tensor:
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        tensor = _as_uint8_hwc(frames)
    else:
        items = [_as_uint8_hwc(f) for f in frames]
        if len({tuple(t.shape) for t in items}) > 1:
            raise ValueError(f"frames in a batch must share one shape, got {[tuple(t.shape) for t in items]}")
        tensor = torch.stack(items) if items else torch.empty(0)
    if tensor.ndim != 4:
        raise ValueError("expected a batch of frames shaped (B, H, W, 3)")
    return tensor
