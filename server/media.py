"""Video and audio in and out: .npy/.npz frame arrays and containers (PyAV), WAV/FLAC/OGG
(soundfile), centre crop + resize, mono mix, band-limited resampling, mp4/wav writing.

Everything here is CPU work: call it off the event loop. Bad input raises `ServeError`
(413 over a limit, 415 an unreadable format, 422 a corrupt or ill-shaped file).
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from server.errors import ErrorCode, ServeError

MAX_CLIP_FRAMES = 256  # frames decoded from one clip
MAX_FRAME_PIXELS = 3840 * 2160  # width x height of one source frame
MAX_AUDIO_SECONDS = 600.0  # duration of an audio file (only the clip's span is decoded)
# An uploaded array, as its header declares it: a compressed .npz cannot inflate past this.
MAX_ARRAY_BYTES = 256 * 2**20
_RESIZE_BATCH = 16  # frames resized at once
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
_CONTAINER_HINT = "send frames as .npy/.npz (T x H x W x 3 uint8) or a container PyAV reads (mp4, webm, avi...)"


# ---------------------------------------------------------------------------------------- video


def decode_video(data: bytes, *, size: tuple[int, int], max_frames: int = MAX_CLIP_FRAMES) -> np.ndarray:
    """Bytes of a .npy/.npz array (T, H, W, 3) uint8 or of a video container -> frames
    (T, h, w, 3) uint8 RGB, centre-cropped to the aspect of `size` = (h, w) and resized to it."""
    if not data:
        raise ServeError(ErrorCode.INVALID_INPUT, "the video part is empty")
    if data.startswith(_NPY_MAGIC):
        return fit_frames(_read_npy(io.BytesIO(data), max_frames=max_frames), size)
    if data.startswith(_ZIP_MAGIC):
        return fit_frames(_read_npz(data, max_frames=max_frames), size)
    return _decode_container(data, size=size, max_frames=max_frames)


def _read_npy(stream: Any, *, max_frames: int) -> np.ndarray:
    """One .npy array, its header checked before the data is read; never unpickles."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as exc:
        raise ServeError(ErrorCode.INVALID_INPUT, f"video is not a readable .npy array: {exc}") from None
    if dtype.hasobject:
        raise ServeError(ErrorCode.INVALID_INPUT, "video arrays holding Python objects (pickles) are not accepted; "
                         "send a plain uint8 array")
    _check_frames_shape(tuple(shape), dtype, max_frames=max_frames)
    stream.seek(0)
    try:
        frames = fmt.read_array(stream, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ServeError(ErrorCode.INVALID_INPUT, f"video array is truncated or corrupt: {exc}") from None
    return frames


def _read_npz(data: bytes, *, max_frames: int) -> np.ndarray:
    """The `video` (or `frames`, or only) array of a .npz archive."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if n.endswith(".npy")]
            chosen = next((f"{k}.npy" for k in ("video", "frames") if f"{k}.npy" in names), None)
            if chosen is None and len(names) == 1:
                chosen = names[0]
            if chosen is None:
                found = ", ".join(n.removesuffix(".npy") for n in names) or "none"
                raise ServeError(ErrorCode.INVALID_INPUT, f".npz video must hold an array named 'video' "
                                 f"(or exactly one array); found: {found}")
            with archive.open(chosen) as member:  # streamed: only the bytes the checked header declares are inflated
                return _read_npy(member, max_frames=max_frames)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise ServeError(ErrorCode.INVALID_INPUT, f"video .npz archive is corrupt: {exc}") from None


def _check_frames_shape(shape: tuple[int, ...], dtype: np.dtype, *, max_frames: int) -> None:
    if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
        raise ServeError(ErrorCode.INVALID_INPUT, f"video array must be frames x height x width x 3 (RGB), "
                         f"got shape {list(shape)}")
    if dtype != np.uint8:
        raise ServeError(ErrorCode.INVALID_INPUT, f"video array must be uint8 (0-255), got {dtype}")
    _check_frame_count(shape[0], max_frames)
    _check_frame_size(shape[1], shape[2])
    if math.prod(shape) > MAX_ARRAY_BYTES:
        raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"video array of shape {list(shape)} is over "
                         f"{MAX_ARRAY_BYTES // 2**20} MiB; send fewer or smaller frames, or a video container")


def _check_frame_count(frames: int, max_frames: int) -> None:
    if frames > max_frames:
        raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"clip has more than {max_frames} frames; "
                         f"at most {max_frames} are accepted")


def _check_frame_size(height: int, width: int) -> None:
    if height * width > MAX_FRAME_PIXELS:
        raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"frames are {width}x{height}; at most "
                         f"{MAX_FRAME_PIXELS} pixels per frame are accepted")


def _decode_container(data: bytes, *, size: tuple[int, int], max_frames: int) -> np.ndarray:
    try:
        import av
    except ImportError:
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "decoding video containers needs PyAV, which is not "
                         "installed (pip install 'perceiver-serve[video]'); or send frames as .npy/.npz "
                         "(T x H x W x 3 uint8)") from None
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError):
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"video is not a recognised format: {_CONTAINER_HINT}") \
            from None
    fitted: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    count = 0
    with container:
        stream = next((s for s in container.streams if s.type == "video"), None)
        if stream is None:
            raise ServeError(ErrorCode.INVALID_INPUT, "the video container has no video stream")
        stream.thread_type = "AUTO"
        _check_frame_size(stream.codec_context.height or 0, stream.codec_context.width or 0)
        try:
            for frame in container.decode(stream):
                count += 1
                _check_frame_count(count, max_frames)
                _check_frame_size(frame.height, frame.width)
                batch.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3) uint8
                if len(batch) == _RESIZE_BATCH:
                    fitted.append(fit_frames(np.stack(batch), size))
                    batch = []
        except av.FFmpegError as exc:
            raise ServeError(ErrorCode.INVALID_INPUT, f"video could not be decoded: {exc}") from None
    if batch:
        fitted.append(fit_frames(np.stack(batch), size))
    if not fitted:
        raise ServeError(ErrorCode.INVALID_INPUT, "the video stream has no decodable frames")
    return np.concatenate(fitted)


def fit_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) uint8: the largest centred crop of the aspect of
    (h, w) (a square for the published model), resized bilinearly with antialiasing."""
    t, height, width, _ = frames.shape
    h, w = size
    crop_h, crop_w = min(height, width * h // w), min(width, height * w // h)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    cropped = frames[:, top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) == (h, w):
        return np.ascontiguousarray(cropped)
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    for start in range(0, t, _RESIZE_BATCH):
        x = torch.from_numpy(np.ascontiguousarray(cropped[start : start + _RESIZE_BATCH])).permute(0, 3, 1, 2)
        x = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + _RESIZE_BATCH] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


# ---------------------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # (N,) float32 mono at the requested rate
    source_rate: int
    source_channels: int


def decode_audio(data: bytes, *, sample_rate: int, max_samples: int, max_seconds: float | None = None) -> Audio:
    """A WAV/FLAC/OGG file -> mono float32 at `sample_rate`, at most `max_samples` samples
    (only the span needed is decoded). Channels are averaged; other rates are resampled."""
    import soundfile

    if not data:
        raise ServeError(ErrorCode.INVALID_INPUT, "the audio part is empty")
    try:
        sound = soundfile.SoundFile(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "audio is not a WAV, FLAC or OGG file soundfile can read") \
            from None
    with sound:
        rate, channels = sound.samplerate, sound.channels
        if rate <= 0 or channels <= 0:
            raise ServeError(ErrorCode.INVALID_INPUT, f"audio header is invalid ({rate} Hz, {channels} channels)")
        longest = MAX_AUDIO_SECONDS if max_seconds is None else max_seconds  # from the header, before decoding
        if sound.frames > longest * rate:
            raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"audio is {sound.frames / rate:.0f} s long; at most "
                             f"{longest:g} s are accepted")
        # Enough source samples for `max_samples` outputs plus the resampling filter's reach.
        wanted = math.ceil(max_samples * rate / sample_rate) + (0 if rate == sample_rate else
                                                                 filter_reach(rate, sample_rate))
        try:
            raw = sound.read(min(wanted, sound.frames), dtype="float32", always_2d=True)  # (n, C)
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
            raise ServeError(ErrorCode.INVALID_INPUT, f"audio could not be decoded: {exc}") from None
    if not np.isfinite(raw).all():
        raise ServeError(ErrorCode.INVALID_INPUT, "audio contains NaN or infinite samples")
    mono = torch.from_numpy(raw).mean(dim=1)  # (n,)
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
    return Audio(mono[:max_samples].numpy(), rate, channels)


def filter_reach(orig_rate: int, new_rate: int, *, zero_crossings: int = 16, rolloff: float = 0.945) -> int:
    """Input samples each side of an output that the resampling filter reads."""
    return math.ceil(zero_crossings / (rolloff * min(1.0, new_rate / orig_rate)))


def resample(
    signal: torch.Tensor, orig_rate: int, new_rate: int, *, zero_crossings: int = 16, rolloff: float = 0.945,
    beta: float = 8.6, block: int = 65536,
) -> torch.Tensor:
    """Band-limited resampling of (N,) samples -> (ceil(N * new / orig),).

    Output n sits at input time n * orig / new = whole + phase / new; it is the input
    convolved with a Kaiser-windowed sinc centred there, cut off at `rolloff` x the lower of
    the two Nyquist rates (so downsampling does not alias). The filter depends only on the
    phase, of which there are new / gcd(orig, new) (160 for 44.1 -> 48 kHz): one table.
    """
    if orig_rate == new_rate:
        return signal
    n = signal.shape[0]
    cutoff = rolloff * min(1.0, new_rate / orig_rate)  # relative to the input's Nyquist rate
    half_width = filter_reach(orig_rate, new_rate, zero_crossings=zero_crossings, rolloff=rolloff)
    step = math.gcd(orig_rate, new_rate)
    taps = torch.arange(-half_width + 1, half_width + 1)  # (2W,) input offsets from `whole`
    phases = torch.arange(0, new_rate, step, dtype=torch.float64) / new_rate  # (P,)
    offset = phases[:, None] - taps[None, :].double()  # (P, 2W): output time - input time
    window = torch.special.i0(beta * (1 - (offset / half_width).clamp(-1, 1) ** 2).sqrt())
    table = (cutoff * torch.sinc(cutoff * offset) * window / torch.special.i0(torch.tensor(beta, dtype=torch.float64)))
    table = table.to(torch.float32)
    padded = F.pad(signal.float(), (half_width, half_width))
    out_len = math.ceil(n * new_rate / orig_rate)
    out = torch.empty(out_len, dtype=torch.float32)
    for start in range(0, out_len, block):
        scaled = torch.arange(start, min(start + block, out_len), dtype=torch.int64) * orig_rate
        whole, phase = scaled // new_rate, (scaled % new_rate) // step
        source = whole[:, None] + taps[None, :] + half_width  # (b, 2W) indices into `padded`
        out[start : start + len(scaled)] = (padded[source] * table[phase]).sum(dim=1)
    return out.to(signal.dtype)


# ---------------------------------------------------------------------------------------- writing


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
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "format=mp4 needs PyAV, which is not installed "
                         "(pip install 'perceiver-serve[video]'); use format=npz") from None
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
        if sound is not None:
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
