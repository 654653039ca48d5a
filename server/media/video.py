"""Video in: .npy/.npz frame arrays and mp4/webm/avi containers (PyAV) -> frames at the model's size.

The cost of a decode follows from header values checked against `VideoLimits` before the work: an
array's shape and byte count, a container's frame count and frame size. FFmpeg is never asked to guess
what the bytes are: the container is recognised here by its magic bytes, only if its setting allows it,
and FFmpeg opens it with that one demuxer and no protocol at all, so nothing inside an upload can make it
open a file, a socket or another demuxer (concat lists, playlists, SDP, external data references...).
Everything here is CPU work: call it off the event loop. Bad input raises `ServeError`.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from server.errors import ErrorCode, ServeError
from server.limits import DEFAULT_LIMITS, VideoLimits

RESIZE_PIXELS = 2**22  # source pixels resized at once (~50 MB as float32 RGB), whatever the frame size
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
_NPY_HEADER_MAX = 10_000  # bytes of a .npy header (numpy's own cap on what it parses)
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}  # what numpy writes; bounded reads
# Reading a zip member's bytes: a broken or lying archive fails with any of these.
_BAD_ZIP = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError)


def _is_mp4(data: bytes) -> bool:
    return data[4:8] == b"ftyp"  # ISO-BMFF: the first box is the file type box


def _is_webm(data: bytes) -> bool:
    return data[:4] == b"\x1a\x45\xdf\xa3"  # EBML header: WebM or Matroska


def _is_avi(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"AVI "


# Setting name -> (magic test, the one FFmpeg demuxer that opens it).
CONTAINERS: dict[str, tuple[Callable[[bytes], bool], str]] = {
    "mp4": (_is_mp4, "mp4"),
    "webm": (_is_webm, "matroska"),
    "avi": (_is_avi, "avi"),
}


MAX_FRAME_RATE = 1000  # frames per second a container may declare and be believed


@dataclass(frozen=True)
class Video:
    frames: np.ndarray  # (T, h, w, 3) uint8 RGB
    frame_rate: Fraction | None  # the container's (average) frame rate; None for arrays, or an implausible one


def decode_video(data: bytes, *, size: tuple[int, int], limits: VideoLimits = DEFAULT_LIMITS.video) -> np.ndarray:
    """Bytes of a .npy/.npz array (T, H, W, 3) uint8 or of an allowed container -> frames (T, h, w, 3)
    uint8 RGB, centre-cropped to the aspect of `size` = (h, w) and resized to it."""
    return decode_clip(data, size=size, limits=limits).frames


def decode_clip(data: bytes, *, size: tuple[int, int], limits: VideoLimits = DEFAULT_LIMITS.video) -> Video:
    """`decode_video`'s frames, and the frame rate the container declares (arrays declare none)."""
    if not data:
        raise ServeError(ErrorCode.INVALID_INPUT, "the video part is empty")
    if data.startswith(_NPY_MAGIC):
        return Video(fit_frames(_read_npy(io.BytesIO(data), len(data), limits), size), None)
    if data.startswith(_ZIP_MAGIC):
        return Video(fit_frames(_read_npz(data, limits), size), None)
    return _decode_container(data, size=size, limits=limits)


def accepted_formats(limits: VideoLimits) -> str:
    return ".npy/.npz frames (T x H x W x 3 uint8), " + ", ".join(limits.containers)


# ---------------------------------------------------------------------------------------- arrays


def _read_npy(stream: io.BufferedIOBase, available: int, limits: VideoLimits) -> np.ndarray:
    """One .npy array of `available` bytes in all: its header (at most _NPY_HEADER_MAX bytes of text) checked
    against the limits and against `available` before any data is read or allocated; never unpickles."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version not in _NPY_HEADERS:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = _NPY_HEADERS[version](stream, max_header_size=_NPY_HEADER_MAX)
    except Exception as exc:  # numpy parses the header text with literal_eval, then tokenize: any error at all
        raise ServeError(ErrorCode.INVALID_INPUT, f"video is not a readable .npy array: {_say(exc)}") from None
    if dtype.hasobject:
        raise ServeError(
            ErrorCode.INVALID_INPUT,
            "video arrays holding Python objects (pickles) are not accepted; send a plain uint8 array",
        )
    _check_frames_shape(tuple(shape), dtype, limits)
    nbytes = math.prod(shape)
    if stream.tell() + nbytes != available:
        raise ServeError(
            ErrorCode.INVALID_INPUT,
            f"video array is truncated or corrupt: its header declares "
            f"{nbytes} bytes of data, the file holds {available - stream.tell()}",
        )
    raw = bytearray(nbytes)  # the frames' own buffer: writable, and as large as the checked header says
    try:
        got = stream.readinto(raw)
    except _BAD_ZIP as exc:
        raise ServeError(ErrorCode.INVALID_INPUT, f"video .npz archive is corrupt: {_say(exc)}") from None
    if got != nbytes:
        raise ServeError(ErrorCode.INVALID_INPUT, f"video array is truncated: {got} of {nbytes} bytes")
    frames = np.frombuffer(raw, dtype=np.uint8)
    return frames.reshape(shape[::-1]).transpose() if fortran else frames.reshape(shape)


def _read_npz(data: bytes, limits: VideoLimits) -> np.ndarray:
    """The `video` (or `frames`, or only) array of a .npz archive, inflated no further than its checked header."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _BAD_ZIP as exc:
        raise ServeError(ErrorCode.INVALID_INPUT, f"video .npz archive is corrupt: {_say(exc)}") from None
    with archive:
        members = {i.filename: i for i in archive.infolist() if i.filename.endswith(".npy")}
        chosen = next((members[f"{k}.npy"] for k in ("video", "frames") if f"{k}.npy" in members), None)
        if chosen is None and len(members) == 1:
            [chosen] = members.values()
        if chosen is None:
            found = ", ".join(n.removesuffix(".npy") for n in members) or "none"
            raise ServeError(
                ErrorCode.INVALID_INPUT,
                f".npz video must hold an array named 'video' (or exactly one array); found: {found}",
            )
        if chosen.flag_bits & 0x1:
            raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "encrypted .npz archives are not accepted")
        if chosen.compress_type not in _ZIP_METHODS:
            # Other methods (bzip2, lzma) inflate a whole read at once: no bound on what one read costs.
            methods = " or ".join(_ZIP_METHODS.values())
            raise ServeError(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                f".npz members must be {methods} (as numpy writes "
                f"them); {chosen.filename!r} uses compression method {chosen.compress_type}",
            )
        try:
            member = archive.open(chosen)
        except (*_BAD_ZIP, NotImplementedError, RuntimeError) as exc:
            raise ServeError(ErrorCode.INVALID_INPUT, f"video .npz archive is corrupt: {_say(exc)}") from None
        with member:  # streamed: only the bytes the checked header declares are inflated
            return _read_npy(cast(io.BufferedIOBase, member), chosen.file_size, limits)


def _check_frames_shape(shape: tuple[int, ...], dtype: np.dtype[Any], limits: VideoLimits) -> None:
    if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
        raise ServeError(
            ErrorCode.INVALID_INPUT, f"video array must be frames x height x width x 3 (RGB), got shape {list(shape)}"
        )
    if dtype != np.uint8:
        raise ServeError(ErrorCode.INVALID_INPUT, f"video array must be uint8 (0-255), got {dtype}")
    _check_frame_count(shape[0], limits)
    _check_frame_size(shape[1], shape[2], limits)
    if math.prod(shape) > limits.max_array_bytes:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"video array of shape {list(shape)} is over "
            f"{limits.max_array_bytes / 2**20:g} MiB (max_array_mb); send fewer or smaller frames, "
            "or a video container",
        )


def _check_frame_count(frames: int, limits: VideoLimits) -> None:
    if frames > limits.max_frames:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"clip has {frames} frames; at most {limits.max_frames} are accepted (max_video_frames)",
        )


def _check_frame_size(height: int, width: int, limits: VideoLimits) -> None:
    if height * width > limits.max_frame_pixels:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"frames are {width}x{height}; at most "
            f"{limits.max_frame_pixels} pixels per frame are accepted (max_video_frame_pixels)",
        )


def _say(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__


# ---------------------------------------------------------------------------------------- containers


def sniff_container(data: bytes) -> str | None:
    """The container the magic bytes say `data` is ("mp4", "webm", "avi"), or None."""
    return next((name for name, (matches, _) in CONTAINERS.items() if matches(data)), None)


def open_options(name: str, limits: VideoLimits) -> dict[str, Any]:
    """Keyword arguments of `av.open` for an upload of container `name`.

    `format` skips FFmpeg's probing; `format_whitelist` refuses any other demuxer, nested ones included;
    an empty `protocol_whitelist` makes every URL a demuxer would open (file, udp, http, concat...) fail,
    since the upload itself is read through PyAV's buffer, which is no protocol. `max_pixels` makes the
    decoders FFmpeg runs while probing refuse frames over the limit before allocating them.
    """
    demuxer = CONTAINERS[name][1]
    return {
        "format": demuxer,
        "metadata_errors": "replace",
        "container_options": {"format_whitelist": demuxer, "protocol_whitelist": ""},
        "options": _decoder_options(limits),
    }


def _decoder_options(limits: VideoLimits) -> dict[str, str]:
    # Decoders check width (aligned to their stride) x height: the margin keeps odd widths under the limit.
    return {"max_pixels": str(limits.max_frame_pixels * 2)}


def _decode_container(data: bytes, *, size: tuple[int, int], limits: VideoLimits) -> Video:
    name = sniff_container(data)
    if name is None or name not in limits.containers:
        what = f"a {name} container, which is not accepted here" if name else "not a recognised format"
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"video is {what}; send {accepted_formats(limits)}")
    try:
        import av
    except ImportError:
        raise ServeError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "decoding video containers needs PyAV, which is not "
            "installed (pip install 'perceiver-serve[video]'); or send frames as .npy/.npz "
            "(T x H x W x 3 uint8)",
        ) from None
    try:
        container = av.open(io.BytesIO(data), mode="r", **open_options(name, limits))
    except (av.FFmpegError, ValueError, OSError, EOFError, MemoryError):
        raise ServeError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"video is not a readable {name} file; send {accepted_formats(limits)}"
        ) from None
    with container:
        stream = next((s for s in container.streams if s.type == "video"), None)
        if stream is None:
            raise ServeError(ErrorCode.INVALID_INPUT, "the video container has no video stream")
        context = stream.codec_context
        if context is None:
            raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"the {name} file's video codec cannot be decoded here")
        _check_frame_count(stream.frames or 0, limits)  # from the container's header; 0 when it has none
        _check_frame_size(context.height or 0, context.width or 0, limits)
        context.options = _decoder_options(limits)
        context.thread_type = "AUTO"
        try:
            return Video(_fit_stream(_frames(container, stream, limits), size), _frame_rate(stream))
        except (av.FFmpegError, ValueError, EOFError, MemoryError) as exc:
            raise ServeError(
                ErrorCode.INVALID_INPUT,
                f"video could not be decoded (corrupt, or frames over "
                f"{limits.max_frame_pixels} pixels, max_video_frame_pixels): {_say(exc)}",
            ) from None


def _frame_rate(stream: Any) -> Fraction | None:
    """The stream's average frame rate (else FFmpeg's guess) when it is a plausible one."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and 0 < rate <= MAX_FRAME_RATE:
            return Fraction(rate)
    return None


def _frames(container: Any, stream: Any, limits: VideoLimits) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames, each checked before it is converted."""
    for count, frame in enumerate(container.decode(stream), start=1):
        _check_frame_count(count, limits)
        _check_frame_size(frame.height, frame.width, limits)
        yield frame.to_ndarray(format="rgb24")


def _fit_stream(frames: Iterator[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Decoded frames fitted in batches of at most RESIZE_PIXELS source pixels."""
    fitted: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    pixels = 0
    for frame in frames:
        if batch and (frame.shape != batch[0].shape or pixels + frame.shape[0] * frame.shape[1] > RESIZE_PIXELS):
            fitted.append(fit_frames(np.stack(batch), size))
            batch, pixels = [], 0
        batch.append(frame)
        pixels += frame.shape[0] * frame.shape[1]
    if batch:
        fitted.append(fit_frames(np.stack(batch), size))
    if not fitted:
        raise ServeError(ErrorCode.INVALID_INPUT, "the video stream has no decodable frames")
    return np.concatenate(fitted)


# ---------------------------------------------------------------------------------------- resizing


def fit_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) uint8: the largest centred crop of the aspect of
    (h, w) (a square for the published model), resized bilinearly with antialiasing. Frames are
    resized a few at a time (RESIZE_PIXELS), so the float copies stay small whatever the frame size."""
    t, height, width, _ = frames.shape
    h, w = size
    crop_h, crop_w = min(height, width * h // w), min(width, height * w // h)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    cropped = frames[:, top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) == (h, w):
        return np.ascontiguousarray(cropped)
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    step = max(1, RESIZE_PIXELS // (crop_h * crop_w))
    for start in range(0, t, step):
        x = torch.from_numpy(np.ascontiguousarray(cropped[start : start + step])).permute(0, 3, 1, 2)
        x = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + step] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
