from __future__ import annotations

import dataclasses
import io
import struct
import sys
import zipfile
from fractions import Fraction

import numpy as np
import pytest
import soundfile
import torch

from server import media
from server.errors import ErrorCode, ServeError
from server.limits import DEFAULT_LIMITS


def npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def sound(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def smooth_frames(count: int, height: int, width: int) -> np.ndarray:
    """Gradients that move frame to frame: content a lossy codec keeps close."""
    t, y, x = np.meshgrid(np.arange(count), np.arange(height), np.arange(width), indexing="ij")
    rgb = np.stack([x * 255 / width, y * 255 / height, (t * 40 + x + y) % 256], axis=-1)
    return rgb.astype(np.uint8)


def code_of(call, *args, **kwargs) -> ErrorCode:
    with pytest.raises(ServeError) as info:
        call(*args, **kwargs)
    return info.value.code


# ------------------------------------------------------------------------------------ resampling


def test_resampling_44k1_to_48k_keeps_length_and_frequency():
    rate, tone = 44_100, 1000.0
    signal = np.sin(2 * np.pi * tone * np.arange(rate) / rate).astype(np.float32)  # 1 s
    out = media.resample(torch.from_numpy(signal), rate, 48_000).numpy()
    assert out.shape == (48_000,) and out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) * 48_000 / len(out) == pytest.approx(tone, abs=1.0)
    expected = np.sin(2 * np.pi * tone * np.arange(48_000) / 48_000)
    assert np.abs(out[200:-200] - expected[200:-200]).max() < 1e-3  # away from the zero-padded ends


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 32_000, 96_000, 44_101])
def test_resampled_length_is_the_duration_at_48k(rate):
    out = media.resample(torch.zeros(rate // 10 + 7), rate, 48_000)
    assert len(out) == -(-(rate // 10 + 7) * 48_000 // rate)


def test_downsampling_removes_what_48k_cannot_represent():
    rate = 96_000
    t = np.arange(rate // 4) / rate
    high = np.sin(2 * np.pi * 30_000 * t)  # above 24 kHz: would alias to 18 kHz
    low = np.sin(2 * np.pi * 5_000 * t)
    out = media.resample(torch.from_numpy((high + low).astype(np.float32)), rate, 48_000).numpy()
    expected = np.sin(2 * np.pi * 5_000 * np.arange(len(out)) / 48_000)
    assert np.abs(out[300:-300] - expected[300:-300]).max() < 2e-3


# ------------------------------------------------------------------------------------ audio files


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", None), ("OGG", None)])
def test_audio_formats_decode_to_mono_float32_at_48k(fmt, subtype):
    samples = (0.5 * np.sin(np.arange(4800) / 10)).astype(np.float32)
    audio = media.decode_audio(sound(samples, 48_000, fmt, subtype), sample_rate=48_000, max_samples=10_000)
    assert audio.samples.dtype == np.float32 and audio.samples.shape == (4800,)
    tolerance = 0.05 if fmt == "OGG" else 1e-4
    assert np.abs(audio.samples - samples).max() < tolerance


def test_stereo_is_mixed_to_mono_and_resampled():
    frames = 4410
    stereo = np.stack([np.full(frames, 0.5), np.full(frames, -0.1)], axis=1).astype(np.float32)
    audio = media.decode_audio(sound(stereo, 44_100, "FLAC"), sample_rate=48_000, max_samples=100_000)
    assert (audio.source_rate, audio.source_channels) == (44_100, 2)
    assert audio.samples.shape == (4800,)
    assert np.abs(audio.samples[100:-100] - 0.2).max() < 1e-3  # the mean of the channels


@pytest.mark.parametrize("rate", [48_000, 44_100, 192_000])
def test_only_the_span_asked_for_is_decoded_and_it_matches_the_whole(rate):
    samples = np.random.default_rng(1).uniform(-0.5, 0.5, rate).astype(np.float32)  # 1 s
    data = sound(samples, rate, "WAV", "FLOAT")
    span = media.decode_audio(data, sample_rate=48_000, max_samples=960).samples
    whole = media.decode_audio(data, sample_rate=48_000, max_samples=48_000).samples
    assert span.shape == (960,) and whole.shape == (48_000,)
    np.testing.assert_allclose(span, whole[:960], atol=1e-6)


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", ErrorCode.INVALID_INPUT),
        (b"not audio at all" * 10, ErrorCode.UNSUPPORTED_MEDIA_TYPE),
        (sound(np.zeros(100, np.float32), 48_000, "FLAC")[:40], ErrorCode.UNSUPPORTED_MEDIA_TYPE),
        (sound(np.array([0.0, np.nan, 0.1], np.float32), 48_000, "WAV", "FLOAT"), ErrorCode.INVALID_INPUT),
    ],
)
def test_bad_audio_is_refused(data, code):
    assert code_of(media.decode_audio, data, sample_rate=48_000, max_samples=100) is code


def test_overlong_audio_is_refused():
    limits = dataclasses.replace(DEFAULT_LIMITS.audio, max_seconds=1.0)
    data = sound(np.zeros(16_000 * 2, np.float32), 16_000)
    with pytest.raises(ServeError) as info:
        media.decode_audio(data, sample_rate=48_000, max_samples=100, limits=limits)
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE and "max_audio_seconds" in info.value.message


def test_wav_writer_round_trips_float32():
    samples = np.random.default_rng(0).uniform(-1, 1, 999).astype(np.float32)
    read, rate = soundfile.read(io.BytesIO(media.write_wav(samples, 48_000)), dtype="float32")
    assert rate == 48_000 and np.array_equal(read, samples)


# ------------------------------------------------------------------------------------ video


def test_npy_frames_at_the_model_size_pass_through_unchanged():
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(media.decode_video(npy(frames), size=(16, 16)), frames)


def test_frames_are_centre_cropped_square_then_resized():
    frames = np.zeros((2, 20, 40, 3), np.uint8)
    frames[:, :, 10:30] = 200  # the centred 20 x 20 square
    out = media.decode_video(npy(frames), size=(10, 10))
    assert out.shape == (2, 10, 10, 3) and (out == 200).all()
    tall = np.zeros((1, 40, 20, 3), np.uint8)
    tall[:, 10:30] = 90
    assert (media.decode_video(npy(tall), size=(5, 5)) == 90).all()


def test_npz_uses_the_video_array():
    frames = np.full((2, 8, 8, 3), 7, np.uint8)
    assert np.array_equal(media.decode_video(npz(video=frames, other=np.zeros(3)), size=(8, 8)), frames)
    assert np.array_equal(media.decode_video(npz(clip=frames), size=(8, 8)), frames)  # the only array
    assert code_of(media.decode_video, npz(a=frames, b=frames), size=(8, 8)) is ErrorCode.INVALID_INPUT


def test_pickled_arrays_are_refused_without_unpickling(monkeypatch):
    import pickle

    def no_unpickling(*_args, **_kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    objects = np.empty((1, 2, 2, 3), dtype=object)
    assert code_of(media.decode_video, npy(objects, allow_pickle=True), size=(2, 2)) is ErrorCode.INVALID_INPUT
    buffer = io.BytesIO()
    np.savez(buffer, video=objects)
    assert code_of(media.decode_video, buffer.getvalue(), size=(2, 2)) is ErrorCode.INVALID_INPUT


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 8, 8), np.uint8),  # no channel axis
        np.zeros((2, 8, 8, 4), np.uint8),  # RGBA
        np.zeros((2, 8, 8, 3), np.float32),  # not uint8
        np.zeros((0, 8, 8, 3), np.uint8),  # no frames
    ],
)
def test_ill_shaped_arrays_are_refused(array):
    assert code_of(media.decode_video, npy(array), size=(8, 8)) is ErrorCode.INVALID_INPUT


def test_limits_are_checked_from_the_header_before_the_data_is_read():
    huge = npy(np.zeros((1, 1, 1, 3), np.uint8)).replace(b"(1, 1, 1, 3)", b"(1, 9000, 9000, 3)")
    assert code_of(media.decode_video, huge, size=(8, 8)) is ErrorCode.PAYLOAD_TOO_LARGE
    many = npy(np.zeros((DEFAULT_LIMITS.video.max_frames + 1, 2, 2, 3), np.uint8))
    assert code_of(media.decode_video, many, size=(2, 2)) is ErrorCode.PAYLOAD_TOO_LARGE


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", ErrorCode.INVALID_INPUT),
        (npy(np.zeros((2, 8, 8, 3), np.uint8))[:-50], ErrorCode.INVALID_INPUT),  # truncated .npy
        (npz(video=np.zeros((2, 8, 8, 3), np.uint8))[:-30], ErrorCode.INVALID_INPUT),  # truncated .npz
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, ErrorCode.UNSUPPORTED_MEDIA_TYPE),  # an mp4 header, no content
        (b"neither an array nor a video" * 4, ErrorCode.UNSUPPORTED_MEDIA_TYPE),
    ],
)
def test_corrupt_video_is_refused(data, code):
    assert code_of(media.decode_video, data, size=(8, 8)) is code


def test_a_zip_that_is_not_an_npz_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert code_of(media.decode_video, buffer.getvalue(), size=(8, 8)) is ErrorCode.INVALID_INPUT


def test_mp4_round_trips_through_pyav():
    frames = smooth_frames(6, 32, 48)
    audio = (0.3 * np.sin(np.arange(6 * 1920) / 7)).astype(np.float32)
    data = media.write_mp4(frames, audio, fps=Fraction(25), sample_rate=48_000)
    decoded = media.decode_video(data, size=(32, 32))  # centre square of the 32 x 48 frames
    assert decoded.shape == (6, 32, 32, 3)
    assert np.abs(decoded.astype(int) - frames[:, :, 8:40].astype(int)).mean() < 4
    import av

    with av.open(io.BytesIO(data)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]


def test_without_pyav_containers_answer_415(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with pytest.raises(ServeError) as info:
        media.decode_video(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, size=(8, 8))
    assert info.value.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE and "PyAV" in info.value.message
    assert not media.pyav_available()
    assert (
        code_of(media.write_mp4, np.zeros((1, 8, 8, 3), np.uint8), None, fps=Fraction(25), sample_rate=48_000)
        is ErrorCode.UNSUPPORTED_MEDIA_TYPE
    )
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    assert np.array_equal(media.decode_video(npy(frames), size=(8, 8)), frames)  # arrays need no PyAV


# ------------------------------------------------------------------------------------ corrupt arrays


def _zip_with(method: int, flags: int = 0, body: bytes | None = None) -> bytes:
    """An .npz whose video.npy member claims compression `method` (and `flags`), optionally with its body replaced."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("video.npy", npy(np.zeros((2, 8, 8, 3), np.uint8)))
    data = bytearray(buffer.getvalue())
    for header, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers: flags, method
        at = data.index(header)
        data[at + offset : at + offset + 4] = struct.pack("<HH", flags, method)
    if body is not None:
        start = data.index(b"video.npy") + len(b"video.npy")
        data[start : start + len(body)] = body
    return bytes(data)


@pytest.mark.parametrize(
    "data, status",
    [
        (_zip_with(99), 415),  # AES / unknown method: zipfile raised NotImplementedError
        (_zip_with(zipfile.ZIP_BZIP2), 415),  # a method whose reads are not bounded
        (_zip_with(zipfile.ZIP_LZMA), 415),
        (_zip_with(zipfile.ZIP_DEFLATED, flags=0x1), 415),  # encrypted: zipfile raised RuntimeError
        (_zip_with(zipfile.ZIP_DEFLATED, body=b"\xff" * 40), 422),  # a broken deflate stream: zlib.error
        (_zip_with(zipfile.ZIP_DEFLATED, body=b"\x03\x00"), 422),  # a stream that ends at once
    ],
    ids=["method-99", "bzip2", "lzma", "encrypted", "broken-deflate", "empty-deflate"],
)
def test_npz_archives_with_other_methods_or_broken_streams(data: bytes, status: int) -> None:
    with pytest.raises(ServeError) as info:
        media.decode_video(data, size=(16, 16))
    assert info.value.status == status, info.value.message


def _npy_with_header(header: bytes) -> bytes:
    header = header + b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


@pytest.mark.parametrize(
    "header",
    [
        b"{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2, 2, 3),",  # SyntaxError
        b"{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2, 2, 3)} + 1",  # not a literal
        b"{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2, 2, 3), 'shape': 7}",
        b"{'descr': 7, 'fortran_order': False, 'shape': (1, 2, 2, 3)}",  # TypeError in numpy
        b"{'descr': '|u1', 'fortran_order': False, 'shape': " + b"(" * 3000 + b")" * 3000 + b"}",  # deep nesting
        b"{'descr': [('a', '|u1', (2**40,))], 'fortran_order': False, 'shape': (1, 2, 2, 3)}",  # a huge sub-array
        b"{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2, 2, 3.5)}",
        b"{'descr': '|u1', 'fortran_order': False, 'shape': (10**400, 2, 2, 3)}",
        b"{'descr': '|u1', 'fortran_order': False, 'shape': (-1, 2, 2, 3)}",
        b"{'descr': '\xff\xfe', 'fortran_order': False, 'shape': (1, 2, 2, 3)}",  # not UTF-8
        b"{'descr': '|u1', 'fortran_order': 'yes', 'shape': (1, 2, 2, 3)}",
    ],
    ids=[
        "unclosed",
        "expression",
        "duplicate-key",
        "descr-int",
        "deep",
        "subarray",
        "float-dim",
        "huge-dim",
        "negative-dim",
        "not-utf8",
        "fortran-str",
    ],
)
def test_npy_headers_that_do_not_parse_are_422(header: bytes) -> None:
    with pytest.raises(ServeError) as info:
        media.decode_video(_npy_with_header(header) + bytes(12), size=(2, 2))
    assert info.value.status in (413, 422), info.value.message
