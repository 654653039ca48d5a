"""What the route benchmark's two sides share: the case measured and its request bytes."""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loadtest.payloads import ModelShapes, clip, frame_pair, npy_bytes, wav_bytes

TASKS = ("flow", "video-labels", "video-recon")
SINTEL = (436, 1024)  # (H, W) of an MPI-Sintel frame: 2 x 3 tiles of 368 x 496
SHIFT = (5, 3)  # (dx, dy) px from frame1 to frame2
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One measurement: a task at a dtype, over one checkpoint."""

    task: str  # one of TASKS
    folder: str  # the checkpoint
    dtype: str = "float32"
    requests: int = 3
    concurrency: tuple[int, ...] = (1,)  # ours: requests in flight (transformers is sequential)
    hf_chunks: int = 4  # video-recon: transformers chunks measured
    flow_size: tuple[int, int] = SINTEL
    threads: int = field(default_factory=torch.get_num_threads)  # torch intra-op threads, both sides
    max_batch_size: int = 6  # ours: the model's batch limit (flow: ~1.1 GB a float32 tile on CPU)
    flops: bool = False  # ours: one more request, its FLOPs counted, and the machine's matmul peak measured

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Case:
        data = json.loads(text)
        return cls(**{**data, "concurrency": tuple(data["concurrency"]), "flow_size": tuple(data["flow_size"])})


def request_files(case: Case, shapes: ModelShapes) -> dict[str, tuple[str, bytes, str]]:
    """The multipart files of every request: the same bytes for both implementations (seeded)."""
    rng = np.random.default_rng(0)
    if case.task == "flow":
        height, width = case.flow_size
        first, second = frame_pair(rng, width, height, SHIFT)
        return {"frame1": ("frame1.png", first, "image/png"), "frame2": ("frame2.png", second, "image/png")}
    height, width = shapes.video_size
    video = npy_bytes(clip(rng, shapes.video_frames, height, width))  # (T, H, W, 3) uint8
    return {
        "video": ("clip.npy", video, "application/octet-stream"),
        "audio": ("clip.wav", wav_bytes(rng, shapes.audio_samples), "audio/wav"),
    }


def model_shapes(case: Case) -> ModelShapes:
    """What the case's checkpoint takes (frame count and size, audio length, flow tile)."""
    return ModelShapes.from_config(json.loads((Path(case.folder) / "config.json").read_text()))


def timings(latencies: list[float], wall_s: float, concurrency: int, **extra: Any) -> dict[str, Any]:
    """One run's numbers: p50 and mean latency, and requests per second of wall time."""
    return dict(
        concurrency=concurrency,
        requests=len(latencies),
        p50_s=statistics.median(latencies),
        mean_s=statistics.fmean(latencies),
        requests_per_s=len(latencies) / wall_s,
        **extra,
    )
