"""Hand-made hostile and edge-case inputs for the server tests."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image


def image_file(width: int = 64, height: int = 48, *, fmt: str = "PNG", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, *, idat: bytes = b"") -> bytes:
    """A PNG whose header claims width x height (8-bit RGB); the pixel data is `idat`, typically far too short."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(idat))
            + _chunk(b"IEND", b""))


def png_bomb(side: int) -> bytes:
    """A valid grayscale PNG of side x side black pixels: ~side**2 bytes decoded from ~side**2 / 1000 on the wire."""
    squeeze, row = zlib.compressobj(9), b"\0" * (side + 1)  # filter byte + pixels
    data = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


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
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("video.npy", "w", force_zip64=True) as member:
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
