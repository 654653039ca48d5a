"""Files crafted to cost a server more than they look: a PNG that inflates a thousand times, a WAV header that
declares any sample rate, and plain video containers to build long clips from. The tests and the benchmarks
(`python -m loadtest.amplification`) share them."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int) -> bytes:
    """A valid grayscale PNG of side x side black pixels: ~side**2 bytes decoded from ~side**2 / 1000 on the wire."""
    squeeze, row = zlib.compressobj(9), b"\0" * (side + 1)  # filter byte + pixels
    data = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)


PCM_GUID = bytes.fromhex("0100000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_PCM


def wav_claiming(rate: int, channels: int = 1, *, frames: int = 64, extensible: bool = False) -> bytes:
    """A 16-bit PCM WAV of silence whose header declares `rate` Hz and `channels` (WAVE_FORMAT_EXTENSIBLE
    when asked): mono with 64 frames is 172 bytes, whatever the rate."""
    block = channels * 2
    fmt = struct.pack(
        "<HHIIHH",
        0xFFFE if extensible else 1,
        channels & 0xFFFF,
        rate & 0xFFFFFFFF,
        (rate * block) & 0xFFFFFFFF,
        block & 0xFFFF,
        16,
    )
    if extensible:
        fmt += struct.pack("<HHI", 22, 16, 0) + PCM_GUID
    body = b"WAVE" + riff_chunk(b"fmt ", fmt) + riff_chunk(b"data", bytes(frames * block))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def video_file(fmt: str, frames: np.ndarray, *, fps: int = 25) -> bytes:
    """(T, H, W, 3) uint8 frames as an mp4 (H.264), webm (VP8) or avi (MPEG-4 part 2) file, written by PyAV."""
    import av

    codec = {"mp4": "libx264", "webm": "libvpx", "avi": "mpeg4"}[fmt]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()
