"""The transformers side of the route benchmark: its models driven as its docs and the DeepMind
optical-flow colab drive them, from the request bytes (decoded with PIL, numpy and soundfile).

- flow: the colab's `compute_grid_indices` and `compute_optical_flow`, reimplemented here (our
  tiling is not used): per tile, 3x3 patches, `model(inputs=patches).logits * 20`, batch 1,
  blended with the pyramid weights.
- video-labels: one forward with chunk 0's `subsampled_output_points` (the least its docs allow).
- video-recon: the docs' per-chunk loop; K of the 128 chunks measured, the loop extrapolated.
"""

from __future__ import annotations

import gc
import io
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from loadtest.route_cases import SINTEL, Case, Outputs, model_shapes, request_files, timings
from loadtest.workers import PeakRSS, max_rss_mb

FLOW_SCALE = 20.0  # the colab's FLOW_SCALE_FACTOR
MIN_OVERLAP = 20  # the colab's


def run_transformers(case: Case) -> tuple[dict[str, Any], Outputs]:
    import transformers

    torch.set_num_threads(case.threads)
    dtype = getattr(torch, case.dtype)
    arch = "PerceiverForOpticalFlow" if case.task == "flow" else "PerceiverForMultimodalAutoencoding"
    model = getattr(transformers, arch).from_pretrained(case.folder, dtype=dtype).eval()
    files = {name: data for name, (_, data, _) in request_files(case, model_shapes(case)).items()}
    request = _hf_flow(model, dtype, files) if case.task == "flow" else _hf_video(model, dtype, files, case)
    extra: dict[str, Any] = {}
    with torch.inference_mode():
        request.warm_up()
        gc.collect()
        latencies = []
        with PeakRSS() as mem:
            start = time.perf_counter()
            for _ in range(case.requests):
                t0 = time.perf_counter()
                outputs = request.run()
                latencies.append(time.perf_counter() - t0)
            wall_s = time.perf_counter() - start
    if request.extrapolate != 1.0:  # video-recon: the chunk loop of a K-chunk run, scaled to all chunks
        latencies = [t + (request.extrapolate - 1) * c for t, c in zip(latencies, request.loop_s, strict=True)]
        wall_s = sum(latencies)
        extra = dict(extrapolated_from_chunks=case.hf_chunks, chunks_total=request.chunks_total)
    runs = [timings(latencies, wall_s, 1, **extra)]
    return (
        dict(
            runs=runs,
            peak_delta_mb=mem.delta_mb,
            peak_rss_mb=max_rss_mb(),
            threads=torch.get_num_threads(),
            **request.info,
        ),
        outputs,
    )


@dataclass
class _Request:
    """One transformers request (`run`: bytes in, outputs out) and its warm-up."""

    run: Callable[[], Outputs]
    warm_up: Callable[[], Any]
    info: dict[str, Any] = field(default_factory=dict)
    extrapolate: float = 1.0  # chunks in all / chunks measured
    chunks_total: int = 0
    loop_s: list[float] = field(default_factory=list)  # per request: time in the chunk loop


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))  # (H, W, 3) uint8


def colab_grid(
    image_shape: tuple[int, int], patch_size: tuple[int, int], min_overlap: int = MIN_OVERLAP
) -> list[tuple[int, int]]:
    """The colab's compute_grid_indices; refuses the sizes where its grid runs off the frame."""
    ys = list(range(0, image_shape[0], patch_size[0] - min_overlap))
    xs = list(range(0, image_shape[1], patch_size[1] - min_overlap))
    ys[-1] = image_shape[0] - patch_size[0]  # the final patch flush with the image boundary
    xs[-1] = image_shape[1] - patch_size[1]
    corners = list(itertools.product(ys, xs))
    if any(
        y < 0 or x < 0 or y + patch_size[0] > image_shape[0] or x + patch_size[1] > image_shape[1] for y, x in corners
    ):
        raise ValueError(
            f"the colab's grid puts a tile outside a {image_shape[1]}x{image_shape[0]} frame; "
            f"pick another --flow-size (Sintel's {SINTEL[1]}x{SINTEL[0]} is fine)"
        )
    return corners


def colab_patches(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """The colab's extract_image_patches (stride 1, TF SAME padding): (N, C, H, W) -> (N, k*k*C, H, W)."""
    n, _, h, w = x.shape
    pad_row, pad_col = kernel - 1, kernel - 1
    x = torch.nn.functional.pad(x, (pad_row // 2, pad_row - pad_row // 2, pad_col // 2, pad_col - pad_col // 2))
    patches = x.unfold(2, kernel, 1).unfold(3, kernel, 1)  # (N, C, H, W, k, k)
    patches = patches.permute(0, 4, 5, 1, 2, 3).contiguous()  # (N, k, k, C, H, W)
    return patches.view(n, -1, h, w)


def colab_flow(model: torch.nn.Module, img1: np.ndarray, img2: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The colab's compute_optical_flow: (H, W, 3) uint8 frames -> (H, W, 2) float flow in pixels."""
    height, width = img1.shape[:2]
    th, tw = (int(s) for s in model.config.train_size)
    frames = [torch.tensor(np.moveaxis(im / 255.0 * 2 - 1, -1, 0)) for im in (img1, img2)]  # (3, H, W) float64
    imgs = torch.stack(frames)[None]  # (1, 2, 3, H, W)
    wx, wy = np.meshgrid(np.arange(tw), np.arange(th))
    weights = np.minimum(np.minimum(wx + 1, tw - wx), np.minimum(wy + 1, th - wy))[None, :, :, None]  # (1, th, tw, 1)
    flows: np.ndarray | float = 0.0
    count: np.ndarray | float = 0.0
    for y, x in colab_grid((height, width), (th, tw)):
        piece = imgs[..., y : y + th, x : x + tw]  # (1, 2, 3, th, tw)
        patches = colab_patches(piece.reshape(2, 3, th, tw)).view(1, 2, 27, th, tw).float().to(dtype)
        flow_piece = (model(inputs=patches).logits.float() * FLOW_SCALE).numpy()  # (1, th, tw, 2)
        padding = [(0, 0), (y, height - y - th), (x, width - x - tw), (0, 0)]
        flows = flows + np.pad(flow_piece * weights, padding)
        count = count + np.pad(weights, padding)
    return (flows / count)[0]  # (H, W, 2)


def _hf_flow(model: torch.nn.Module, dtype: torch.dtype, files: dict[str, bytes]) -> _Request:
    def run() -> Outputs:
        return {"flow": colab_flow(model, _decode_png(files["frame1"]), _decode_png(files["frame2"]), dtype)}

    th, tw = model.config.train_size
    tile = torch.zeros(1, 2, 27, th, tw, dtype=dtype)
    height, width = _decode_png(files["frame1"]).shape[:2]
    return _Request(run, lambda: model(inputs=tile), info=dict(tiles=len(colab_grid((height, width), (th, tw)))))


def _hf_video(model: torch.nn.Module, dtype: torch.dtype, files: dict[str, bytes], case: Case) -> _Request:
    import soundfile

    from model_core.chunking import default_num_chunks  # the chunk count only: 128 for the real clip

    config = model.config
    frames, height, width = config.output_shape[1:4]
    image_points = frames * height * width
    audio_points = frames * config.audio_samples_per_frame // config.samples_per_patch
    nchunks = default_num_chunks(image_points=image_points, audio_points=audio_points)
    image_chunk, audio_chunk = image_points // nchunks, audio_points // nchunks

    def subsampling(k: int) -> dict[str, torch.Tensor | None]:  # as in transformers' docs
        return {
            "image": torch.arange(image_chunk * k, image_chunk * (k + 1)),
            "audio": torch.arange(audio_chunk * k, audio_chunk * (k + 1)),
            "label": None,
        }

    def inputs() -> dict[str, torch.Tensor]:
        video = np.load(io.BytesIO(files["video"]), allow_pickle=False)  # (T, H, W, 3) uint8
        audio, _ = soundfile.read(io.BytesIO(files["audio"]), dtype="float32")  # (S,)
        return dict(
            image=(torch.from_numpy(video).permute(0, 3, 1, 2)[None] / 255).to(dtype),  # (1, T, 3, H, W)
            audio=torch.from_numpy(audio)[None, :, None].to(dtype),  # (1, S, 1)
            label=torch.zeros(1, config.num_labels, dtype=dtype),
        )

    if case.task == "video-labels":

        def labels() -> Outputs:
            logits = model(inputs=inputs(), subsampled_output_points=subsampling(0)).logits["label"][0]
            scores = logits.float().softmax(-1)
            best = int(scores.argmax())
            return {"label": np.array(config.id2label[best]), "score": np.array(float(scores[best]))}

        return _Request(labels, labels)

    measured, loop_s = min(case.hf_chunks, nchunks), []

    def reconstruct() -> Outputs:
        clip_inputs = inputs()
        start = time.perf_counter()
        outs = [model(inputs=clip_inputs, subsampled_output_points=subsampling(k)).logits for k in range(measured)]
        loop_s.append(time.perf_counter() - start)
        return {
            "image": torch.cat([o["image"][0] for o in outs]).float().numpy(),  # (K * chunk, 3)
            "audio": torch.cat([o["audio"][0] for o in outs]).float().numpy(),
        }  # (K * chunk * spp,)

    return _Request(
        reconstruct,
        lambda: model(inputs=inputs(), subsampled_output_points=subsampling(0)),
        extrapolate=nchunks / measured,
        chunks_total=nchunks,
        loop_s=loop_s,
    )
