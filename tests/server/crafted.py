"""Hand-made hostile and edge-case inputs for the server tests, and probes of what an input costs the
process that decodes it (peak memory, files opened, sockets bound)."""

from __future__ import annotations

import errno
import io
import os
import re
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from loadtest.hostile import png_bomb, png_chunk, riff_chunk, video_file, wav_claiming  # noqa: F401 (re-exported)


def image_file(width: int = 64, height: int = 48, *, fmt: str = "PNG", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int, *, idat: bytes = b"") -> bytes:
    """A PNG whose header claims width x height (8-bit RGB); the pixel data is `idat`, typically far too short."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(idat))
        + png_chunk(b"IEND", b"")
    )


def nested_json(depth: int, *, key: str = "inputs") -> bytes:
    """{"inputs": [[[ ... "x[MASK]" ... ]]]} nested `depth` levels in all (the object counts as one)."""
    return f'{{"{key}": '.encode() + b"[" * (depth - 1) + b'"x[MASK]"' + b"]" * (depth - 1) + b"}"


def npy_claiming(shape: tuple[int, ...], *, data: bytes = bytes(64)) -> bytes:
    """A .npy file whose header declares a uint8 array of `shape`; the data is `data`, typically far too short."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return header.getvalue() + data


def npz_bomb(shape: tuple[int, ...]) -> bytes:
    """A valid .npz whose `video` array of zeros inflates ~1000-fold: 64 x 1080p frames in ~400 kB."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("video.npy", "w", force_zip64=True) as member,
    ):
        member.write(npy_claiming(shape, data=b""))
        left, block = int(np.prod(shape)), bytes(1 << 22)
        while left > 0:
            member.write(block[: min(left, len(block))])
            left -= len(block)
    return buffer.getvalue()


def npy_file(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ audio headers


def flac_claiming(flac: bytes, rate: int) -> bytes:
    """`flac` with the sample rate of its STREAMINFO block (20 bits: at most 1048575 Hz) replaced."""
    assert flac[:4] == b"fLaC" and flac[4] & 0x7F == 0, "STREAMINFO must be the first metadata block"
    (bits,) = struct.unpack(">Q", flac[18:26])
    bits = (bits & ~(0xFFFFF << 44)) | ((rate & 0xFFFFF) << 44)
    return flac[:18] + struct.pack(">Q", bits) + flac[26:]


def _ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def ogg_vorbis_claiming(ogg: bytes, *, rate: int | None = None, channels: int | None = None) -> bytes:
    """An Ogg Vorbis file with the rate and/or channels of its identification header replaced (CRC kept valid)."""
    start = ogg.index(b"\x01vorbis")
    header = bytearray(ogg)
    if channels is not None:
        header[start + 11] = channels & 0xFF
    if rate is not None:
        header[start + 12 : start + 16] = struct.pack("<I", rate & 0xFFFFFFFF)
    segments = header[26]
    end = 27 + segments + sum(header[27 : 27 + segments])  # the first page holds the identification header
    header[22:26] = bytes(4)
    header[22:26] = struct.pack("<I", _ogg_crc(bytes(header[:end])))
    return bytes(header)


# ------------------------------------------------------------------------------------ video containers


def png_frames_in_avi(png: bytes, *, count: int = 2, side: int = 16) -> bytes:
    """An AVI whose header says `side` x `side` PNG frames; each frame is `png`, whatever size its own header says."""
    from fractions import Fraction

    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="avi") as container:
        stream = container.add_stream("png", rate=25)
        stream.width = stream.height = side
        stream.pix_fmt = "rgb24"
        for i in range(count):
            packet = av.Packet(png)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 25)
            container.mux(packet)
    return buffer.getvalue()


_BOX_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"dinf", b"stbl", b"edts"}


def _rewrite_boxes(data: bytes, change: Callable[[bytes, bytes], bytes]) -> bytes:
    """ISO-BMFF boxes with each leaf box's payload replaced by change(kind, payload); sizes recomputed."""
    out, at = b"", 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        payload = data[at + 8 : at + size]
        payload = _rewrite_boxes(payload, change) if kind in _BOX_CONTAINERS else change(kind, payload)
        out += struct.pack(">I4s", len(payload) + 8, kind) + payload
        at += size
    return out


def mp4_with_external_data(mp4: bytes, path: str) -> bytes:
    """`mp4` whose video track's data reference is a Mac alias record to the absolute `path`: a demuxer that
    follows external references (FFmpeg's mov with enable_drefs and use_absolute_path) opens that file."""
    target = path.encode()
    record = (
        bytes(10)
        + bytes([6])
        + b"volume".ljust(27, b"\0")
        + bytes(12)
        + bytes([6])
        + b"target".ljust(63, b"\0")
        + bytes(16)
        + struct.pack(">HH", 0, 0)
        + bytes(16)
        + struct.pack(">HH", 2, len(target))
        + target
        + b"\0" * (len(target) % 2)
        + struct.pack(">hH", -1, 0)
    )
    alias = struct.pack(">I4sI", 12 + len(record), b"alis", 0) + record

    def change(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">II", 0, 1) + alias if kind == b"dref" else payload

    return _rewrite_boxes(mp4, change)


# ------------------------------------------------------------------------------------ what an input costs


class FifoWatch:
    """A named pipe at `path` that records whether anything opened it for reading (a reader that opens it
    is let go at once with end-of-file): proof that a file was, or was not, opened."""

    def __init__(self, path: Path) -> None:
        self.path, self.opened = path, False
        os.mkfifo(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader has it open
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                time.sleep(0.001)
                continue
            self.opened = True
            os.close(fd)

    def __enter__(self) -> FifoWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.02)  # a last look
        self._stop.set()
        self._thread.join()
        self.path.unlink()


def _status_kib(pid: int | str, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


@contextmanager
def peak_rss_growth(pid: int | str = "self") -> Iterator[list[int]]:
    """Yields a list that holds, after the block, the process's peak resident memory during the block minus its
    resident memory before it, in bytes (Linux: the high-water mark is reset through /proc/PID/clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status_kib(pid, "VmRSS")
    growth: list[int] = []
    yield growth
    growth.append((_status_kib(pid, "VmHWM") - before) * 1024)


def udp_ports(pid: int | None = None) -> set[tuple[str, int]]:
    """The UDP addresses the process has bound."""
    import psutil

    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="udp")}
