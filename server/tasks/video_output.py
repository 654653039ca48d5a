"""What a video request asks for (labels and/or the reconstruction, in which format) and its answer, rendered.

The JSON answer has the shape of `server.http.schemas.AutoencodeVideoResponse`; npz carries the arrays, mp4 the
video with its sound, wav the sound alone. Rendering is CPU work (mp4 encoding): call it off the event loop.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from server import media
from server.errors import ErrorCode, ServeError
from server.tasks.labels import DEFAULT_TOP_K, as_labels
from server.tasks.video_autoencoding import SAMPLE_RATE, Autoencoded

Format = Literal["json", "npz", "mp4", "wav"]
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "npz": "application/x-npz",
    "mp4": "video/mp4",
    "wav": "audio/wav",
}
_FORMATS: dict[tuple[bool, bool], tuple[Format, ...]] = {  # (labels, reconstruction) -> allowed, the default first
    (True, False): ("json", "npz"),
    (False, True): ("npz", "mp4", "wav"),
    (True, True): ("npz",),
}


@dataclass(frozen=True)
class Wanted:
    labels: bool
    reconstruction: bool
    format: Format
    top_k: int


def parse_wanted(outputs: str, fmt: Format | None, top_k: int | None) -> Wanted:
    """`outputs` ("labels", "reconstruction" or both, comma-separated) and a format that can carry them."""
    names = {part.strip() for part in outputs.split(",") if part.strip()}
    unknown = names - {"labels", "reconstruction"}
    if not names or unknown:
        raise ServeError(ErrorCode.INVALID_INPUT, f"outputs must list labels and/or reconstruction, got {outputs!r}")
    labels, reconstruction = "labels" in names, "reconstruction" in names
    allowed = _FORMATS[(labels, reconstruction)]
    if fmt is not None and fmt not in allowed:
        raise ServeError(
            ErrorCode.INVALID_INPUT,
            f"format={fmt} cannot carry outputs={','.join(sorted(names))}; use one of: {', '.join(allowed)}",
        )
    chosen = fmt or allowed[0]
    if chosen == "mp4" and not media.pyav_available():
        raise ServeError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "format=mp4 needs PyAV, which is not installed (pip install 'perceiver-serve[video]'); use format=npz",
        )
    return Wanted(labels, reconstruction, chosen, top_k or DEFAULT_TOP_K)


@dataclass(frozen=True)
class Rendered:
    body: bytes
    media_type: str
    headers: dict[str, str]


def render(result: Autoencoded, wanted: Wanted, *, model: str) -> Rendered:
    """The answer in the format asked for."""
    windows = [
        {"start_frame": w.start, "end_frame": w.end, "padded_frames": w.padded, "labels": as_labels(w.labels)}
        for w in result.windows
    ]
    headers = {
        "X-Clip-Frames": str(result.frames),
        "X-Clip-Windows": str(len(windows)),
        "X-Padded-Frames": str(result.windows[-1].padded),
        "X-Audio-Input": result.audio_source,
    }
    if wanted.format == "json":
        body = {
            "model": model,
            "frames": result.frames,
            "window_frames": result.window_frames,
            "audio": result.audio_source,
            "windows": windows,
        }
        return Rendered(json.dumps(body, ensure_ascii=False).encode(), MEDIA_TYPES["json"], headers)
    if wanted.format == "wav":
        assert result.audio is not None
        content = media.write_wav(result.audio, SAMPLE_RATE)
    elif wanted.format == "mp4":
        assert result.video is not None
        content = media.write_mp4(result.video, result.audio, fps=result.fps, sample_rate=SAMPLE_RATE)
    else:
        content = _npz(result, windows, labels=wanted.labels)
    headers["Content-Disposition"] = f'attachment; filename="autoencoded.{wanted.format}"'
    return Rendered(content, MEDIA_TYPES[wanted.format], headers)


def _npz(result: Autoencoded, windows: list[dict[str, Any]], *, labels: bool) -> bytes:
    """video (T, H, W, 3) uint8, audio (N,) float32, sample_rate, windows (W, 3) [start, end,
    padded], and with labels a (W,) string array: one JSON list of {label, score} per window."""
    arrays: dict[str, np.ndarray] = {
        "sample_rate": np.array(SAMPLE_RATE, dtype=np.int64),
        "windows": np.array([[w["start_frame"], w["end_frame"], w["padded_frames"]] for w in windows], dtype=np.int64),
    }
    if result.video is not None and result.audio is not None:
        arrays["video"], arrays["audio"] = result.video, result.audio
    if labels:
        arrays["labels"] = np.array([json.dumps(w["labels"]) for w in windows], dtype=np.str_)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub takes the keywords for allow_pickle
    return buffer.getvalue()
