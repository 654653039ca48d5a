"""Realistic request payloads for every route, synthesised with numpy and Pillow (no files, no network).

Shared by the Locust file and the headless runner: nothing here imports an HTTP client. A
`Payload` says how to send itself with httpx (`httpx_kwargs`) or requests/Locust (`requests_kwargs`).
Shapes follow the served model (`ModelShapes.from_config`): texts fit its maximum length, frame
pairs are at least its optical-flow tile, clips have its frame count, frame size and audio length.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

MASK = "[MASK]"
ROUTE_TASKS: dict[str, str] = {
    "/fill-mask": "fill-mask",
    "/classify-text": "text-classification",
    "/classify-image": "image-classification",
    "/optical-flow": "optical-flow",
    "/autoencode-video": "video-autoencoding",
}
SENTENCES = (
    "The Perceiver reads bytes, pixels and audio samples through one cross-attention into a small latent array.",
    "Paris is the capital of France, and the Seine runs through the middle of the city.",
    "A quick brown fox jumps over the lazy dog while the farmer watches from the barn.",
    "The committee will publish its final report next Tuesday after the vote.",
    "Rain is expected over the northern hills tonight, clearing by the morning.",
    "She ordered a coffee, opened her laptop and started writing the first chapter.",
    "Les enfants jouent dans le jardin pendant que le soleil se couche.",
    "Der Zug nach München fährt um halb neun vom dritten Gleis ab.",
    "Transformers scale quadratically with input length; latent bottlenecks do not.",
    "The museum reopened its east wing with a collection of Roman coins and glass.",
)
IMAGE_SIZES = ((224, 224), (320, 240), (640, 480), (1024, 768))


@dataclass(frozen=True)
class Payload:
    """One request to `route`: a JSON body, raw bytes, or multipart files (field -> (filename, data, type))."""

    route: str
    label: str  # what kind of input this is, e.g. "jpeg 640x480 raw"
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    body: bytes | None = None
    content_type: str | None = None
    files: dict[str, tuple[str, bytes, str]] = field(default_factory=dict)

    def httpx_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"params": self.params}
        if self.json is not None:
            kwargs["json"] = self.json
        elif self.files:
            kwargs["files"] = self.files
        else:
            kwargs["content"] = self.body or b""
            kwargs["headers"] = {"content-type": self.content_type or "application/octet-stream"}
        return kwargs

    def requests_kwargs(self) -> dict[str, Any]:
        kwargs = self.httpx_kwargs()
        if "content" in kwargs:
            kwargs["data"] = kwargs.pop("content")
        return kwargs

    @property
    def size(self) -> int:
        """Bytes of the body (before multipart/JSON framing)."""
        if self.json is not None:
            return len(json.dumps(self.json))
        return len(self.body or b"") + sum(len(f[1]) for f in self.files.values())


@dataclass(frozen=True)
class ModelShapes:
    """What a served model accepts; defaults are the DeepMind checkpoints'."""

    max_tokens: int = 2048  # text: max_position_embeddings (bytes + 2 special tokens)
    flow_size: tuple[int, int] = (368, 496)  # optical flow: train_size (H, W), the smallest frame accepted
    video_frames: int = 16
    video_size: tuple[int, int] = (224, 224)
    audio_samples: int = 16 * 1920  # whole clip, mono

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShapes:
        found: dict[str, Any] = {}
        if "max_position_embeddings" in config:
            found["max_tokens"] = int(config["max_position_embeddings"])
        if "train_size" in config:
            found["flow_size"] = tuple(int(v) for v in config["train_size"])
        if "output_shape" in config and "num_frames" in config:
            frames, height, width = (int(v) for v in config["output_shape"][1:4])
            found.update(video_frames=frames, video_size=(height, width))
            found["audio_samples"] = frames * int(config.get("audio_samples_per_frame", 1920))
        return cls(**found)

    @classmethod
    def from_source(cls, source: str) -> ModelShapes:
        """Shapes from a local checkpoint folder's config.json; the DeepMind defaults for hub ids."""
        config = Path(source).expanduser() / "config.json"
        try:
            return cls.from_config(json.loads(config.read_text()))
        except (OSError, ValueError):
            return cls()


# ---- text ------------------------------------------------------------------------------------


def masked_text(rng: np.random.Generator, *, target_bytes: int) -> str:
    """Sentences up to about `target_bytes` UTF-8 bytes, one word masked byte by byte (one [MASK] per byte)."""
    words: list[str] = []
    while not words or len(" ".join(words).encode()) < target_bytes:
        words += SENTENCES[int(rng.integers(len(SENTENCES)))].split()
    while len(words) > 2 and len(" ".join(words).encode()) > target_bytes:
        words.pop()
    i = int(rng.integers(1, len(words)))
    word = words[i].rstrip(".,;")
    words[i] = MASK * len(word.encode()) + words[i][len(word) :]
    return " ".join(words)


def text_lengths(rng: np.random.Generator, count: int, *, max_tokens: int) -> list[int]:
    """Byte lengths of a mixed load: 40 % short (~32), 40 % medium (~160), 20 % long (~700), within the model."""
    ceiling = max_tokens - 2
    kinds = rng.choice(3, size=count, p=[0.4, 0.4, 0.2])
    lengths = np.where(
        kinds == 0,
        rng.integers(20, 40, count),
        np.where(kinds == 1, rng.integers(100, 220, count), rng.integers(400, 900, count)),
    )
    return [int(min(n, ceiling)) for n in lengths]


def fill_mask_payloads(
    rng: np.random.Generator, count: int, shapes: ModelShapes, *, fixed_bytes: int | None = None
) -> list[Payload]:
    """Texts of mixed lengths (or all `fixed_bytes` long), each with one masked word; top_k 5."""
    lengths = [fixed_bytes] * count if fixed_bytes else text_lengths(rng, count, max_tokens=shapes.max_tokens)
    out = []
    for n in lengths:
        text = masked_text(rng, target_bytes=n)
        out.append(Payload("/fill-mask", f"text ~{len(text.encode())} B", json={"inputs": text}))
    return out


def classify_text_payloads(
    rng: np.random.Generator, count: int, shapes: ModelShapes, *, fixed_bytes: int | None = None
) -> list[Payload]:
    lengths = [fixed_bytes] * count if fixed_bytes else text_lengths(rng, count, max_tokens=shapes.max_tokens)
    out = []
    for n in lengths:
        text = masked_text(rng, target_bytes=n).replace(MASK, "x")
        out.append(Payload("/classify-text", f"text ~{n} B", json={"inputs": text, "parameters": {"top_k": 2}}))
    return out


# ---- images ----------------------------------------------------------------------------------


def synth_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like RGB image: a two-colour gradient, a few filled shapes, and sensor noise."""
    start, end = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
    ramp = (
        np.linspace(0, 0.7, width, dtype=np.float32)[None, :, None]
        + np.linspace(0, 0.3, height, dtype=np.float32)[:, None, None]
    )  # (H, W, 1)
    image = Image.fromarray((start + (end - start) * ramp).astype(np.uint8), "RGB")  # (H, W, 3)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(width // 10, width // 2)), y0 + int(rng.integers(height // 10, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    noise = (rng.standard_normal((height, width, 1), dtype=np.float32) * 6).astype(np.int16)  # (H, W, 1)
    noisy = np.asarray(image, dtype=np.int16) + noise
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB")


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 88} if fmt == "JPEG" else {"compress_level": 1}))
    return buf.getvalue()


def image_payloads(
    rng: np.random.Generator, count: int, shapes: ModelShapes, *, sizes: Sequence[tuple[int, int]] = IMAGE_SIZES
) -> list[Payload]:
    """Images of several sizes, 3/4 JPEG and 1/4 PNG, sent as raw bytes, multipart or base64 JSON in turn."""
    out = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        fmt = "PNG" if i % 4 == 3 else "JPEG"
        data = encode_image(synth_image(rng, width, height), fmt)
        mime = f"image/{fmt.lower()}"
        how = ("raw", "multipart", "json")[i % 3]
        label = f"{fmt.lower()} {width}x{height} {how}"
        if how == "raw":
            out.append(Payload("/classify-image", label, body=data, content_type=mime))
        elif how == "multipart":
            out.append(Payload("/classify-image", label, files={"file": (f"image.{fmt.lower()}", data, mime)}))
        else:
            out.append(Payload("/classify-image", label, json={"inputs": base64.b64encode(data).decode()}))
    return out


# ---- optical flow ----------------------------------------------------------------------------


def frame_pair(rng: np.random.Generator, width: int, height: int, shift: tuple[int, int]) -> tuple[bytes, bytes]:
    """Two PNG frames of one scene, the second moved by `shift` = (dx, dy) pixels (a camera pan)."""
    dx, dy = shift
    scene = np.asarray(synth_image(rng, width + abs(dx), height + abs(dy)))
    x1, y1 = max(0, -dx), max(0, -dy)
    x2, y2 = x1 + dx, y1 + dy
    first = Image.fromarray(scene[y1 : y1 + height, x1 : x1 + width])
    second = Image.fromarray(scene[y2 : y2 + height, x2 : x2 + width])
    return encode_image(first, "PNG"), encode_image(second, "PNG")


def flow_payloads(rng: np.random.Generator, count: int, shapes: ModelShapes) -> list[Payload]:
    """Frame pairs at the model's tile size and 1.25x it, shifted by a few pixels; flow as .npy or PNG."""
    height, width = shapes.flow_size
    sizes = [(width, height), (width * 5 // 4, height * 5 // 4)]
    out = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        shift = (int(rng.integers(-6, 7)), int(rng.integers(-4, 5)))
        first, second = frame_pair(rng, w, h, shift)
        fmt = "png" if i % 4 == 3 else "npy"
        out.append(
            Payload(
                "/optical-flow",
                f"pair {w}x{h} -> {fmt}",
                params={"format": fmt},
                files={"frame1": ("frame1.png", first, "image/png"), "frame2": ("frame2.png", second, "image/png")},
            )
        )
    return out


# ---- video + audio ---------------------------------------------------------------------------


def clip(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a textured background with a bright square moving across it."""
    base = np.asarray(synth_image(rng, width, height))
    side = max(2, min(height, width) // 4)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    vx, vy = int(rng.integers(1, 4)), int(rng.integers(-2, 3))
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    colour = rng.integers(128, 256, 3).astype(np.uint8)
    for t in range(frames):
        out[t] = base
        px, py = (x + vx * t) % (width - side + 1), (y + vy * t) % (height - side + 1)
        out[t, py : py + side, px : px + side] = colour
    return out


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def wav_bytes(rng: np.random.Generator, samples: int, *, rate: int = 48_000) -> bytes:
    """Mono 16-bit PCM: a tone with a little noise."""
    t = np.arange(samples) / rate
    tone = 0.4 * np.sin(2 * np.pi * float(rng.uniform(110, 880)) * t) + rng.normal(0, 0.02, samples)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((tone.clip(-1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def video_payloads(rng: np.random.Generator, count: int, shapes: ModelShapes) -> list[Payload]:
    """Clips of the model's frame count and size with their audio; labels only (reconstruction is heavy)."""
    height, width = shapes.video_size
    out = []
    for _ in range(count):
        video = npy_bytes(clip(rng, shapes.video_frames, height, width))
        audio = wav_bytes(rng, shapes.audio_samples)
        out.append(
            Payload(
                "/autoencode-video",
                f"clip {shapes.video_frames}x{width}x{height}",
                params={"outputs": "labels"},
                files={
                    "video": ("clip.npy", video, "application/octet-stream"),
                    "audio": ("clip.wav", audio, "audio/wav"),
                },
            )
        )
    return out


BUILDERS: dict[str, Callable[[np.random.Generator, int, ModelShapes], list[Payload]]] = {
    "/fill-mask": fill_mask_payloads,
    "/classify-text": classify_text_payloads,
    "/classify-image": image_payloads,
    "/optical-flow": flow_payloads,
    "/autoencode-video": video_payloads,
}


def build(route: str, count: int, shapes: ModelShapes, *, seed: int = 0) -> list[Payload]:
    """`count` payloads for `route` (deterministic for a seed)."""
    return BUILDERS[route](np.random.default_rng(seed), count, shapes)
