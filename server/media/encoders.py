"""Media out: the mp4 and wav files of the video route's answers.

CPU work: call it off the event loop.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from server.errors import ErrorCode, ServeError


def write_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """(N,) float32 -> a mono 32-bit float WAV file."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def pyav_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def write_mp4(frames: np.ndarray, audio: np.ndarray | None, *, fps: Fraction, sample_rate: int) -> bytes:
    """(T, H, W, 3) uint8 at `fps`, with an optional (N,) float32 mono track -> an MP4 file
    (H.264 yuv420p, AAC). Needs PyAV."""
    try:
        import av
    except ImportError:
        raise ServeError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "format=mp4 needs PyAV, which is not installed (pip install 'perceiver-serve[video]'); use format=npz",
        ) from None
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.options = {"crf": "18", "preset": "veryfast"}
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout = "mono"
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(video.encode())
        if sound is not None and audio is not None:
            for packet in _encode_audio(av, sound, audio, sample_rate):
                container.mux(packet)
    return buffer.getvalue()


def _encode_audio(av: Any, stream: Any, audio: np.ndarray, sample_rate: int) -> Iterator[Any]:
    step = stream.codec_context.frame_size or 1024
    for start in range(0, len(audio), step):
        part = np.ascontiguousarray(audio[start : start + step], dtype=np.float32)[None, :]  # (1, n) planar
        frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, start
        yield from stream.encode(frame)
    yield from stream.encode()
