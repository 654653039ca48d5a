"""video-autoencoding: frames + audio -> Kinetics-700 labels and/or the reconstructed clip.

A clip is cut into windows of the model's `num_frames`; each window is encoded once (one
"encode" item) and its outputs are decoded from the cached latents in passes of several
chunks (one "decode" item each), sized to a byte budget of decoder activations. Every item
is its own unit of work on the model's worker thread, so short requests interleave with a
long reconstruction instead of waiting behind it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, cast

import numpy as np
import torch

from model_core import PerceiverForTask
from model_core.chunking import (
    DecoderWidths,
    Points,
    chunks_per_pass,
    default_num_chunks,
    indices,
    label_only,
    output_chunks,
    passes,
)
from model_core.model import Encoded
from model_core.preprocessors.base import Preprocessed
from model_core.presets import AudioVideoProcessing
from server import media
from server.limits import DEFAULT_LIMITS, AudioLimits, Limits, VideoLimits
from server.tasks.labels import DEFAULT_TOP_K, Labels

SAMPLE_RATE = AudioVideoProcessing().sample_rate  # the model family's audio rate
# The frame rate of a clip that declares none (.npy/.npz frames): the published model's training clips' (48 kHz
# audio, 1920 samples a frame).
DEFAULT_FRAME_RATE = Fraction(25)
DECODE_BUDGET_BYTES = DEFAULT_LIMITS.decode_budget_bytes  # decoder activations per pass (decode_budget_mb)
MAX_CHUNKS = 128  # the finest chunking of one window's outputs (the published model's)
ANSWER_OVERHEAD_BYTES = 64 * 1024  # an answer's headers, JSON keys and containers, beyond its arrays and labels
AudioSource = Literal["provided", "silence"]
Progress = Callable[[int, int], None]  # (units done, units in all)


@dataclass(frozen=True)
class Clip:
    """A prepared clip: whole windows, the last one filled by repeating the last frame."""

    frames: np.ndarray  # (W * F, h, w, 3) uint8
    audio: np.ndarray  # (W * F * samples_per_frame,) float32 at SAMPLE_RATE, silence past the clip
    num_frames: int  # frames of the input clip, before filling
    window_frames: int  # F
    audio_source: AudioSource
    frame_rate: Fraction = DEFAULT_FRAME_RATE  # the input's, as its container declares it

    @property
    def windows(self) -> int:
        return len(self.frames) // self.window_frames


@dataclass(frozen=True)
class EncodeItem:
    frames: np.ndarray  # (F, h, w, 3) uint8
    audio: np.ndarray  # (F * samples_per_frame,) float32


@dataclass(frozen=True)
class DecodeItem:
    latents: torch.Tensor  # (L, D) on the model's device
    image: torch.Tensor  # (n_image,) flat (t, y, x) output indices
    audio: torch.Tensor  # (n_audio,) audio patch indices


@dataclass(frozen=True)
class PassOutput:
    image: torch.Tensor  # (n_image, 3) uint8 RGB (the [0, 1] output clipped and scaled)
    audio: torch.Tensor  # (n_audio * samples_per_patch,) float32
    label: torch.Tensor  # (num_labels,) float32 logits


@dataclass(frozen=True)
class Window:
    start: int  # first frame of the input clip in this window
    end: int  # one past its last input frame
    padded: int  # repeated frames that fill it
    labels: list[tuple[str, float]]


@dataclass(frozen=True)
class Autoencoded:
    frames: int  # of the input clip
    window_frames: int
    windows: list[Window]
    video: np.ndarray | None  # (T, H, W, 3) uint8, the input's T frames
    audio: np.ndarray | None  # (T * samples_per_frame,) float32 at SAMPLE_RATE
    audio_source: AudioSource
    fps: Fraction  # the input clip's frame rate: a reconstruction plays as long as the clip


class VideoAutoencodingRunner:
    """The task runner of a multimodal autoencoder, plus clip preparation and the plan
    of its units of work. Sizes come from the checkpoint's config."""

    def __init__(
        self,
        model: PerceiverForTask,
        *,
        device: torch.device,
        dtype: torch.dtype,
        budget_bytes: int = DECODE_BUDGET_BYTES,
    ) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        config = model.config
        self.window_frames = config.num_frames
        self.size = (int(config.output_shape[2]), int(config.output_shape[3]))  # (h, w) the model takes
        self.samples_per_frame = config.audio_samples_per_frame
        self.samples_per_patch = config.samples_per_patch
        self.num_labels = config.num_labels
        self.classes = Labels.of(config)
        self.image_points = self.window_frames * self.size[0] * self.size[1]
        self.audio_points = self.window_frames * self.samples_per_frame // self.samples_per_patch
        self.num_chunks = default_num_chunks(
            image_points=self.image_points, audio_points=self.audio_points, max_chunks=MAX_CHUNKS
        )
        self.chunk_queries = (self.image_points + self.audio_points) // self.num_chunks
        self.widths = DecoderWidths.of(model)
        self.element_size = torch.empty((), dtype=dtype).element_size()
        self.budget_bytes = budget_bytes
        self.chunks_per_pass = chunks_per_pass(
            self.widths,
            chunk_queries=self.chunk_queries,
            num_chunks=self.num_chunks,
            budget_bytes=self.budget_bytes,
            element_size=self.element_size,
        )
        chunks = output_chunks(
            num_chunks=self.num_chunks, image_points=self.image_points, audio_points=self.audio_points
        )
        # One window's decode passes: model_core's plan, each pass a unit of work on the batcher.
        self.passes = [points for _, points in passes(chunks, self.chunks_per_pass)]

    # -- preparation (CPU work: call off the event loop)

    def prepare(
        self,
        video: bytes,
        audio: bytes | None,
        *,
        video_limits: VideoLimits = DEFAULT_LIMITS.video,
        audio_limits: AudioLimits = DEFAULT_LIMITS.audio,
    ) -> Clip:
        clip = media.decode_clip(video, size=self.size, limits=video_limits)
        frames = clip.frames  # (T, h, w, 3)
        count = len(frames)
        windows = math.ceil(count / self.window_frames)
        fill = windows * self.window_frames - count
        if fill:
            frames = np.concatenate([frames, np.repeat(frames[-1:], fill, axis=0)])
        samples = np.zeros(windows * self.window_frames * self.samples_per_frame, dtype=np.float32)
        source: AudioSource = "silence"
        if audio is not None:
            decoded = media.decode_audio(
                audio, sample_rate=SAMPLE_RATE, max_samples=count * self.samples_per_frame, limits=audio_limits
            )
            samples[: len(decoded.samples)] = decoded.samples
            source = "provided"
        return Clip(frames, samples, count, self.window_frames, source, clip.frame_rate or DEFAULT_FRAME_RATE)

    def encode_item(self, clip: Clip, window: int) -> EncodeItem:
        first, samples = window * self.window_frames, self.window_frames * self.samples_per_frame
        return EncodeItem(
            clip.frames[first : first + self.window_frames], clip.audio[window * samples : (window + 1) * samples]
        )

    @staticmethod
    def decode_item(latents: torch.Tensor, points: Points) -> DecodeItem:
        return DecodeItem(latents, indices(points, "image"), indices(points, "audio"))

    def check_answer(self, clip: Clip, limits: Limits, *, labels: bool, reconstruct: bool, top_k: int) -> int:
        """Refuse (413) a clip whose labels (windows x top_k) or reconstruction (every frame and its audio, built
        in memory whatever the format) would be over the limits, before any of it runs. Returns the most the
        answer can be, in bytes (what a job's result will need to be kept)."""
        size = ANSWER_OVERHEAD_BYTES
        if labels:
            entries = self.classes.check(limits, rows=clip.windows, top_k=top_k, what="windows")
            size += entries * self.classes.entry_bytes * 4  # npz keeps them as UTF-32
        if reconstruct:
            h, w = self.size
            frames = clip.num_frames * (h * w * 3 + self.samples_per_frame * 4)  # uint8 RGB, float32 audio
            limits.check_answer(
                frames,
                f"a reconstruction of {clip.num_frames} frames of {w}x{h} with their audio",
                "send a shorter clip, or ask for outputs=labels",
            )
            size += frames
        return size

    def units(self, clip: Clip, *, reconstruct: bool) -> int:
        """Units of work (encodes + decode passes) the clip takes: the progress total."""
        return clip.windows * (1 + (len(self.passes) if reconstruct else 1))

    # -- the batcher's steps (collate, forward and split run on the worker thread)

    def key(self, item: EncodeItem | DecodeItem) -> tuple[Any, ...]:
        if isinstance(item, EncodeItem):
            return ("encode", *item.frames.shape, *item.audio.shape)
        return ("decode", len(item.image), len(item.audio))

    def collate(self, items: Sequence[EncodeItem | DecodeItem]) -> Any:
        if isinstance(items[0], EncodeItem):  # a batch has one kind of item (the keys differ)
            encodes = cast(Sequence[EncodeItem], items)
            frames = torch.from_numpy(np.stack([i.frames for i in encodes])).to(self.device)  # (B, F, h, w, 3)
            audio = torch.from_numpy(np.stack([i.audio for i in encodes])).to(self.device)  # (B, S)
            return {
                "image": frames.permute(0, 1, 4, 2, 3).to(self.dtype) / 255,  # (B, F, 3, h, w) in [0, 1]
                "audio": audio.to(self.dtype)[:, :, None],  # (B, S, 1)
                "label": torch.zeros(len(items), self.num_labels, device=self.device, dtype=self.dtype),
            }
        return list(items)

    def forward(self, batch: Any) -> Any:
        if isinstance(batch, dict):
            return self.model.encode(batch).latents  # (B, L, D)
        return self._decode(batch)

    def split(self, output: Any, items: Sequence[EncodeItem | DecodeItem]) -> list[Any]:
        if isinstance(output, torch.Tensor):
            return list(output.unbind(0))  # latents (L, D) per item, kept on the device
        return output

    def _decode(self, items: list[DecodeItem]) -> list[PassOutput]:
        """Items decoded in groups whose activations stay within the budget together."""
        queries = len(items[0].image) + len(items[0].audio) + 1
        per_item = self.widths.pass_bytes(queries, element_size=self.element_size)
        group = max(1, self.budget_bytes // per_item)
        results: list[PassOutput] = []
        for start in range(0, len(items), group):
            part = items[start : start + group]
            latents = torch.stack([i.latents for i in part])  # (b, L, D)
            points = {
                "image": torch.stack([i.image for i in part]),  # (b, n_image)
                "audio": torch.stack([i.audio for i in part]),  # (b, n_audio)
                "label": None,
            }
            out = self.model.decode(latents_only(latents), points)
            assert isinstance(out, dict), "a multimodal model decodes per modality"
            image = _to_uint8(out["image"]).cpu()  # (b, n_image, 3): a quarter of the bytes to copy back
            audio, label = (out[k].float().cpu() for k in ("audio", "label"))
            results += [PassOutput(image[j], audio[j], label[j]) for j in range(len(part))]
        return results

    def labels(self, logits: torch.Tensor, top_k: int) -> list[tuple[str, float]]:
        return self.classes.rank(logits, top_k=top_k, function="softmax")


def latents_only(latents: torch.Tensor) -> Encoded:
    """The encoder state a multimodal decode needs: its queries are built from output
    positions alone, so the preprocessed inputs (52097 x 704 values a clip) are not kept."""
    empty = latents.new_empty(latents.shape[0], 0, 0)
    return Encoded(latents=latents, pre=Preprocessed(inputs=empty, without_pos=empty))


async def autoencode(
    call: Any,
    clip: Clip,
    *,
    labels: bool,
    reconstruct: bool,
    top_k: int = DEFAULT_TOP_K,
    progress: Progress | None = None,
) -> Autoencoded:
    """Run a prepared clip through `call`'s model, one unit of work at a time (a request's deadline covers
    them all; a job's call gives each unit its own)."""
    runner: VideoAutoencodingRunner = call.runner
    total, done = runner.units(clip, reconstruct=reconstruct), 0
    h, w = runner.size
    video = np.empty((len(clip.frames) * h * w, 3), dtype=np.uint8) if reconstruct else None
    audio = np.empty(len(clip.audio), dtype=np.float32) if reconstruct else None
    image_per_window, audio_per_window = runner.image_points, runner.window_frames * runner.samples_per_frame

    async def step(item: EncodeItem | DecodeItem) -> Any:
        nonlocal done
        [result] = await call.infer([item])
        done += 1
        if progress is not None:
            progress(done, total)
        return result

    if progress is not None:
        progress(0, total)
    windows = []
    for index in range(clip.windows):
        latents = await step(runner.encode_item(clip, index))
        logits = None
        for points in runner.passes if reconstruct else [label_only()]:
            out: PassOutput = await step(runner.decode_item(latents, points))
            logits = out.label if logits is None else logits
            image_points, audio_points = indices(points, "image"), indices(points, "audio")
            if video is not None and audio is not None and len(image_points):
                first = index * image_per_window + int(image_points[0])
                video[first : first + len(out.image)] = out.image.numpy()
                first = index * audio_per_window + int(audio_points[0]) * runner.samples_per_patch
                audio[first : first + len(out.audio)] = out.audio.numpy()
        assert logits is not None
        start = index * clip.window_frames
        end = min(start + clip.window_frames, clip.num_frames)
        windows.append(
            Window(start, end, start + clip.window_frames - end, runner.labels(logits, top_k) if labels else [])
        )
    keep = clip.num_frames
    return Autoencoded(
        frames=clip.num_frames,
        window_frames=clip.window_frames,
        windows=windows,
        video=None if video is None else video.reshape(-1, h, w, 3)[:keep],
        audio=None if audio is None else audio[: keep * runner.samples_per_frame],
        audio_source=clip.audio_source,
        fps=clip.frame_rate,
    )


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """(..., 3) on the [0, 1] scale -> uint8 on the same device, clipped as the DeepMind colab displays it."""
    return (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
