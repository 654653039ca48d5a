"""What an uploaded video or audio file can make the server do: only the container formats the settings allow
are decoded, FFmpeg opens nothing but the upload itself (no file, socket or other demuxer named inside it),
and the cost of a decode follows from header values checked against the limits.

Each hostile case is first shown to reach the resource through FFmpeg as PyAV opens it by default (so the
protective tests below could fail), then shown not to through the server's decoders and a live server."""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import soundfile

from server import media
from server.errors import ErrorCode, ServeError
from server.limits import DEFAULT_LIMITS
from server.media import video
from tests.server.conftest import REPO, free_port, models_table, wait_ready, write_config
from tests.server.crafted import (
    FifoWatch,
    flac_claiming,
    image_file,
    mp4_with_external_data,
    npy_file,
    ogg_vorbis_claiming,
    peak_rss_growth,
    png_bomb,
    png_frames_in_avi,
    udp_ports,
    video_file,
    wav_claiming,
)

SIZE = (16, 16)
TARGET = "secret.mp4"  # what the hostile files name, relative to the decoding process's working directory


def frames(count: int = 4, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    """Gradients that move frame to frame: content a lossy codec keeps close."""
    t, y, x = np.meshgrid(np.arange(count), np.arange(height), np.arange(width), indexing="ij")
    rgb = np.stack([x * 255 / width, y * 255 / height, (t * 40 + x + y + seed) % 256], axis=-1)
    return rgb.astype(np.uint8)


def sdp(port: int) -> bytes:
    return (
        f"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=clip\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
        f"m=video {port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    ).encode()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def playlist(*segments: str) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:10", "#EXT-X-MEDIA-SEQUENCE:0"]
    for segment in segments:
        lines += ["#EXTINF:10.0,", segment]
    return ("\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n").encode()


# Files that name another resource: label -> builder(absolute path of the named file) -> bytes.
# The relative ones name TARGET in the working directory.
NAMING_A_FILE: dict[str, Callable[[Path], bytes]] = {
    "ffconcat, relative path": lambda p: f"ffconcat version 1.0\nfile {TARGET}\n".encode(),
    "ffconcat, quoted path and duration": lambda p: f"ffconcat version 1.0\nfile '{TARGET}'\nduration 1\n".encode(),
    "ffconcat, two file lines": lambda p: f"ffconcat version 1.0\nfile {TARGET}\nfile {TARGET}\n".encode(),
    "ffconcat, absolute path": lambda p: f"ffconcat version 1.0\nfile '{p}'\n".encode(),
    "ffconcat, file: URL": lambda p: f"ffconcat version 1.0\nfile 'file:{p}'\n".encode(),
    "ffconcat, subfile: URL": lambda p: f"ffconcat version 1.0\nfile 'subfile,,start,0,end,0,,:{p}'\n".encode(),
    "HLS playlist, relative segment": lambda p: playlist(TARGET),
    "HLS playlist, absolute segment": lambda p: playlist(str(p)),
    "HLS playlist, file: URL": lambda p: playlist(f"file://{p}"),
    "HLS master playlist": lambda p: f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n{p}\n".encode(),
    "mp4 with an external data reference": lambda p: mp4_with_external_data(video_file("mp4", frames()), str(p)),
}
# What it takes for FFmpeg, as PyAV opens a buffer by default, to follow each reference (the control).
FOLLOWED_WITH: dict[str, dict[str, Any]] = {
    "ffconcat, relative path": {},
    "ffconcat, quoted path and duration": {},
    "ffconcat, two file lines": {},
    "ffconcat, absolute path": {"format": "concat", "container_options": {"safe": "0"}},
    "ffconcat, file: URL": {"format": "concat", "container_options": {"safe": "0"}},
    "HLS playlist, relative segment": {"format": "hls"},
    "HLS playlist, absolute segment": {"format": "hls"},
    "HLS playlist, file: URL": {"format": "hls"},
    "mp4 with an external data reference": {"container_options": {"enable_drefs": "1", "use_absolute_path": "1"}},
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def opens(data: bytes, **options: Any) -> None:
    """Open and decode `data` with PyAV, failures ignored: the question is what FFmpeg touched meanwhile."""
    try:
        with av.open(io.BytesIO(data), timeout=1, **options) as container:
            for _ in container.decode(video=0):
                pass
    except (av.FFmpegError, ValueError, OSError, IndexError):
        pass


def refusal(data: bytes, **kwargs: Any) -> ServeError:
    with pytest.raises(ServeError) as info:
        media.decode_video(data, size=SIZE, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------ references to files


@pytest.mark.parametrize("label", sorted(FOLLOWED_WITH))
def test_control_ffmpeg_follows_the_reference_when_asked_to_probe(workdir: Path, label: str) -> None:
    with FifoWatch(workdir / TARGET) as target:
        opens(NAMING_A_FILE[label](workdir / TARGET), **FOLLOWED_WITH[label])
    assert target.opened, "this case no longer reaches its file in FFmpeg: it tests nothing"


@pytest.mark.parametrize("label", sorted(NAMING_A_FILE))
def test_a_file_naming_another_resource_is_415_and_nothing_is_opened(workdir: Path, label: str) -> None:
    with FifoWatch(workdir / TARGET) as target:
        error = refusal(NAMING_A_FILE[label](workdir / TARGET))
    assert not target.opened
    if label.startswith("mp4"):  # an accepted container whose only track lives elsewhere: nothing to decode
        assert error.code is ErrorCode.INVALID_INPUT, error.message
    else:
        assert error.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE and "mp4, webm, avi" in error.message, error.message


def test_the_concatenated_file_is_not_decoded(workdir: Path) -> None:
    """The hostile list names a real video in the working directory; its frames never come back."""
    (workdir / TARGET).write_bytes(video_file("mp4", frames()))
    data = f"ffconcat version 1.0\nfile {TARGET}\n".encode()
    with av.open(io.BytesIO(data)) as container:  # the control: FFmpeg alone would decode it
        assert len(list(container.decode(video=0))) == 4
    assert refusal(data).code is ErrorCode.UNSUPPORTED_MEDIA_TYPE


@pytest.mark.parametrize(
    "label, demuxer, extra",
    [
        ("ffconcat, relative path", "concat", {"safe": "0"}),
        ("ffconcat, absolute path", "concat", {"safe": "0"}),
        ("HLS playlist, relative segment", "hls", {}),
        ("HLS playlist, absolute segment", "hls", {}),
        ("mp4 with an external data reference", "mp4", {"enable_drefs": "1", "use_absolute_path": "1"}),
    ],
)
def test_the_protocol_whitelist_alone_stops_a_demuxer_forced_to_follow(
    workdir: Path, label: str, demuxer: str, extra: dict[str, str]
) -> None:
    """Were sniffing bypassed and the demuxer told to follow references, FFmpeg still opens no URL."""
    options = video.open_options("mp4", DEFAULT_LIMITS.video)
    options["format"] = demuxer
    options["container_options"] = {**options["container_options"], "format_whitelist": f"{demuxer},mpegts", **extra}
    with FifoWatch(workdir / TARGET) as target:
        opens(NAMING_A_FILE[label](workdir / TARGET), **options)
    assert not target.opened


# ------------------------------------------------------------------------------------ sockets


class UdpWatch:
    """Samples the UDP sockets of a process (this one by default) until stopped."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid, self.seen = pid, set[tuple[str, int]]()
        self._before = udp_ports(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.seen |= udp_ports(self.pid) - self._before
            time.sleep(0.002)

    def __enter__(self) -> UdpWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seen |= udp_ports(self.pid) - self._before
        self._stop.set()
        self._thread.join()


def test_control_ffmpeg_binds_the_ports_an_sdp_file_names() -> None:
    port = free_udp_port()
    with UdpWatch() as watch:
        opens(sdp(port))
    assert ("0.0.0.0", port) in watch.seen


def test_an_sdp_file_is_415_fast_and_binds_no_socket() -> None:
    with UdpWatch() as watch:
        started = time.monotonic()
        error = refusal(sdp(free_udp_port()))
    assert error.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE
    assert not watch.seen and time.monotonic() - started < 1


def test_the_protocol_whitelist_alone_stops_sdp() -> None:
    options = video.open_options("mp4", DEFAULT_LIMITS.video)
    options.update(format="sdp", container_options={**options["container_options"], "format_whitelist": "sdp"})
    with UdpWatch() as watch:
        opens(sdp(free_udp_port()), **options)
    assert not watch.seen


# ------------------------------------------------------------------------------------ formats


def _muxed(fmt: str, codec: str = "mpeg4") -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for image in frames(3, 32, 32):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def _wav() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(480, np.float32), 48_000, format="WAV")
    return buffer.getvalue()


NOT_ACCEPTED: dict[str, Callable[[], bytes]] = {
    "PNG (png_pipe)": lambda: image_file(fmt="PNG"),
    "JPEG (jpeg_pipe)": lambda: image_file(fmt="JPEG"),
    "GIF": lambda: image_file(fmt="GIF"),
    "BMP": lambda: image_file(fmt="BMP"),
    "WEBP": lambda: image_file(fmt="WEBP"),
    "MPEG-TS": lambda: _muxed("mpegts"),
    "FLV": lambda: _muxed("flv", "flv"),
    "NUT": lambda: _muxed("nut"),
    "QuickTime without ftyp": lambda: video_file("mp4", frames())[video_file("mp4", frames()).index(b"mdat") - 4 :],
    "WAV audio": _wav,
    "plain text (tty demuxer)": lambda: b"Dear server,\nplease render this text as video.\n" * 20,
    "JSON": lambda: b'{"video": "clip.mp4", "frames": [1, 2, 3]}',
    "HTML": lambda: b"<!doctype html><html><body><video src='clip.mp4'></video></body></html>",
    "SubRip subtitles": lambda: b"1\n00:00:01,000 --> 00:00:02,000\nhello\n\n2\n00:00:03,000 --> 00:00:04,000\nbye\n",
    "WebVTT subtitles": lambda: b"WEBVTT\n\n00:00.000 --> 00:01.000\nhello\n",
    "image2 pattern name": lambda: b"frame%03d.png",
    "data: URL": lambda: b"data:video/mp4;base64,AAAAGGZ0eXBtcDQy",
}


@pytest.mark.parametrize("label", sorted(NOT_ACCEPTED))
def test_formats_the_route_does_not_document_are_415(label: str) -> None:
    error = refusal(NOT_ACCEPTED[label]())
    assert error.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE and "mp4, webm, avi" in error.message, error.message


@pytest.mark.parametrize("fmt", ["mp4", "webm", "avi"])
def test_accepted_containers_decode(fmt: str) -> None:
    source = frames(6, 32, 48)
    decoded = media.decode_video(video_file(fmt, source), size=(32, 32))  # the centred square of 32 x 48
    assert decoded.shape == (6, 32, 32, 3)
    assert np.abs(decoded.astype(int) - source[:, :, 8:40].astype(int)).mean() < 6


def test_only_the_containers_the_settings_name_are_decoded() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS.video, containers=("mp4",))
    for fmt in ("webm", "avi"):
        error = refusal(video_file(fmt, frames()), limits=limits)
        assert error.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE, error.message
        assert f"a {fmt} container, which is not accepted" in error.message and error.message.endswith("uint8), mp4")
    assert media.decode_video(video_file("mp4", frames()), size=SIZE, limits=limits).shape == (4, 16, 16, 3)


# ------------------------------------------------------------------------------------ header limits


@pytest.mark.parametrize("fmt", ["mp4", "avi"])  # containers whose header counts the frames
def test_frame_count_is_refused_from_the_container_header(fmt: str) -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS.video, max_frames=3)
    error = refusal(video_file(fmt, frames(5)), limits=limits)
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE and "5 frames" in error.message  # the header's count
    assert "max_video_frames" in error.message


def test_frame_count_is_refused_while_decoding_without_a_header_count() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS.video, max_frames=3)
    error = refusal(video_file("webm", frames(5)), limits=limits)
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE and "4 frames" in error.message


@pytest.mark.parametrize("fmt", ["mp4", "webm", "avi"])
def test_frame_size_is_refused_from_the_container_header(fmt: str) -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS.video, max_frame_pixels=32 * 48 - 1)
    error = refusal(video_file(fmt, frames()), limits=limits)
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE and "48x32" in error.message
    assert "max_video_frame_pixels" in error.message


@pytest.mark.parametrize("side", [8_000, 16_000])
def test_frames_larger_than_the_header_says_are_refused_before_they_are_allocated(side: int) -> None:
    """The AVI header says 16 x 16; each PNG frame says side x side (64 or 256 MB decoded from ~100 kB)."""
    data = png_frames_in_avi(png_bomb(side))
    with peak_rss_growth() as growth:
        error = refusal(data)
    assert error.status in (413, 422)
    assert growth[0] < 24 * 2**20, f"decoding grew the process by {growth[0] / 2**20:.0f} MB"


def test_memory_follows_the_frame_budget_not_the_frame_size() -> None:
    """16 frames of 1080p: resizing goes a few frames at a time, never as one float copy of them all."""
    y, x = np.mgrid[0:1080, 0:1920]
    base = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    data = video_file("mp4", np.stack([np.roll(base, 8 * i, axis=1) for i in range(16)]))
    with peak_rss_growth() as growth:
        decoded = media.decode_video(data, size=(224, 224))
    assert decoded.shape == (16, 224, 224, 3)
    assert growth[0] < 150 * 2**20, f"decoding grew the process by {growth[0] / 2**20:.0f} MB"


# ------------------------------------------------------------------------------------ audio formats


def _sound(fmt: str, rate: int = 48_000, channels: int = 1, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros((4800, channels), np.float32), rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def audio_refusal(data: bytes, **kwargs: Any) -> ServeError:
    with pytest.raises(ServeError) as info:
        media.decode_audio(data, sample_rate=48_000, max_samples=48_000, **kwargs)
    return info.value


@pytest.mark.parametrize(
    "fmt, subtype",
    [
        ("AIFF", None),
        ("AU", None),
        ("CAF", None),
        ("W64", None),
        ("RF64", None),
        ("NIST", None),
        ("VOC", None),
        ("IRCAM", "PCM_16"),
        ("MAT5", "DOUBLE"),
        ("SVX", None),
    ],
)
def test_audio_formats_libsndfile_reads_but_the_settings_do_not_name_are_415(fmt: str, subtype: str | None) -> None:
    data = _sound(fmt, subtype=subtype)
    assert soundfile.info(io.BytesIO(data)).format == fmt  # the control: libsndfile would read it
    error = audio_refusal(data)
    assert error.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE and "WAV, FLAC, OGG" in error.message


@pytest.mark.parametrize(
    "data",
    [
        wav_claiming(48_000),
        wav_claiming(44_100, 2, extensible=True),
        _sound("WAV", subtype="FLOAT"),
        _sound("WAVEX", 16_000, 3),
        _sound("FLAC", 96_000),
        _sound("OGG", 22_050),
    ],
    ids=["pcm", "extensible", "float", "wavex-3ch", "flac", "ogg"],
)
def test_accepted_audio_decodes(data: bytes) -> None:
    assert media.decode_audio(data, sample_rate=48_000, max_samples=100).samples.shape[0] > 0


def test_only_the_audio_formats_the_settings_name_are_decoded() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS.audio, formats=("FLAC",))
    for data in (_sound("WAV"), _sound("OGG")):
        error = audio_refusal(data, limits=limits)
        assert error.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE and "(FLAC)" in error.message
    assert media.decode_audio(_sound("FLAC"), sample_rate=48_000, max_samples=100, limits=limits).samples.size


# Audio whose header declares a rate or channel count outside the limits: (data, status, the limit named).
HEADER_BOMBS: dict[str, tuple[bytes, int, str]] = {
    "WAV 2 MHz (172 bytes)": (wav_claiming(2_000_000), 413, "max_audio_sample_rate"),
    "WAV 1999999 Hz, coprime with 48 kHz": (wav_claiming(1_999_999), 413, "max_audio_sample_rate"),
    "WAV 4 GHz (libsndfile refuses it)": (wav_claiming(4_000_000_000), 415, "WAV"),
    "WAV 2**31 - 1 Hz": (wav_claiming(2**31 - 1), 413, "max_audio_sample_rate"),
    "WAV extensible 768001 Hz": (wav_claiming(768_001, extensible=True), 413, "max_audio_sample_rate"),
    "WAV 192001 Hz": (wav_claiming(192_001), 413, "max_audio_sample_rate"),
    "WAV 1 Hz": (wav_claiming(1), 422, "1000"),
    "WAV 999 Hz": (wav_claiming(999), 422, "1000"),
    "WAV 9 channels": (wav_claiming(48_000, 9), 413, "max_audio_channels"),
    "WAV extensible 200 channels": (wav_claiming(48_000, 200, extensible=True), 413, "max_audio_channels"),
    "FLAC 1 MHz": (flac_claiming(_sound("FLAC"), 1_000_000), 413, "max_audio_sample_rate"),
    "FLAC 655 kHz": (flac_claiming(_sound("FLAC"), 655_350), 413, "max_audio_sample_rate"),
    "FLAC 1 Hz": (flac_claiming(_sound("FLAC"), 1), 422, "1000"),
    "OGG 2 MHz": (ogg_vorbis_claiming(_sound("OGG"), rate=2_000_000), 413, "max_audio_sample_rate"),
    "OGG 3999999 Hz": (ogg_vorbis_claiming(_sound("OGG"), rate=3_999_999), 413, "max_audio_sample_rate"),
    "OGG 200 channels": (ogg_vorbis_claiming(_sound("OGG"), channels=200), 413, "max_audio_channels"),
}


@pytest.mark.parametrize("label", sorted(HEADER_BOMBS))
def test_audio_headers_outside_the_limits_are_refused_before_decoding(label: str) -> None:
    data, status, named = HEADER_BOMBS[label]
    with peak_rss_growth() as growth:
        error = audio_refusal(data)
    assert (error.status, named in error.message) == (status, True), error.message
    assert growth[0] < 8 * 2**20


@pytest.mark.parametrize("rate", [1_000, 7_919, 44_101, 191_999, 192_000])
def test_audio_within_the_limits_costs_memory_within_a_budget(rate: int) -> None:
    """10 s at any allowed rate, coprime ones included (no phase table of 48000 rows): the input itself
    (10 s x rate x 4 bytes as float32) plus a bounded resampling budget."""
    data = wav_claiming(rate, frames=rate * 10)
    with peak_rss_growth() as growth:
        audio = media.decode_audio(data, sample_rate=48_000, max_samples=480_000)
    assert audio.samples.shape == (480_000,)
    assert growth[0] < rate * 10 * 4 + 40 * 2**20, f"{growth[0] / 2**20:.0f} MB"


# ------------------------------------------------------------------------------------ a live server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path]) -> Iterator[tuple[str, int, Path]]:
    """`python -m server` serving the small video model, in a working directory of its own holding a real
    video (TARGET): (base URL, server pid, that directory)."""
    cwd = tmp_path_factory.mktemp("server-cwd")
    (cwd / TARGET).write_bytes(video_file("mp4", frames(4, 16, 16)))
    video_model = {"video": models_table(checkpoints, max_delay_ms=0)["video"]}
    config = write_config(
        cwd / "serve.toml", {"server": {"device": "cpu", "max_concurrent_decodes": 1}, "models": video_model}
    )
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log = (cwd / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "--config",
            str(config),
            "--preload",
            "video",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout_s=90, exited=lambda: None if proc.poll() is None else (cwd / "server.log").read_text())
        yield base, proc.pid, cwd
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def post_video(base: str, data: bytes, audio: bytes | None = None) -> httpx.Response:
    files = {"video": ("clip", data, "application/octet-stream")}
    if audio is not None:
        files["audio"] = ("audio", audio, "application/octet-stream")
    return httpx.post(f"{base}/autoencode-video", files=files, timeout=60)


@pytest.mark.slow
def test_live_server_does_not_decode_a_file_an_ffconcat_upload_names(live: tuple[str, int, Path]) -> None:
    base, _, cwd = live
    control = post_video(base, npy_file(frames(4, 16, 16)))
    assert control.status_code == 200, control.text
    response = post_video(base, f"ffconcat version 1.0\nfile {TARGET}\n".encode())
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"
    with FifoWatch(cwd / "pipe.mp4") as target:
        response = post_video(base, b"ffconcat version 1.0\nfile pipe.mp4\n")
    assert response.status_code == 415 and not target.opened


@pytest.mark.slow
def test_live_server_binds_no_socket_for_an_sdp_upload(live: tuple[str, int, Path]) -> None:
    base, pid, _ = live
    with UdpWatch(pid) as watch:
        started = time.monotonic()
        response = post_video(base, sdp(free_udp_port()))
    assert response.status_code == 415 and not watch.seen
    assert time.monotonic() - started < 5  # no decode slot held waiting for packets


@pytest.mark.slow
def test_live_server_memory_stays_flat_under_audio_header_bombs(live: tuple[str, int, Path]) -> None:
    base, pid, _ = live
    clip = npy_file(frames(16, 16, 16))  # 16 frames: the audio span decoded is 16 x 32 samples at 48 kHz
    post_video(base, clip, wav_claiming(48_000))  # warm: the first request's allocations are not the bombs'
    for label, (data, status, _) in HEADER_BOMBS.items():
        with peak_rss_growth(pid) as growth:
            response = post_video(base, clip, data)
        assert response.status_code == status, (label, response.text)
        assert growth[0] < 64 * 2**20, f"{label}: the server grew by {growth[0] / 2**20:.0f} MB"
