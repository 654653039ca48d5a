"""Every limit a request is held to, in one object built from the settings.

Inputs are checked from what a request declares (counts, header values, image and array headers) before
the work they would cost; answers are bounded the same way, from checked request values, before the
model runs: how many ranked entries an answer may hold (`max_candidates`) and how many bytes it may be
(`max_response_mb`). Past any limit: 413 naming the limit and its setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.errors import ErrorCode, ServeError
from server.settings import ServerSettings

MIN_AUDIO_SAMPLE_RATE = 1_000  # Hz; no real recording is below it


@dataclass(frozen=True)
class ImageLimits:
    """What a request's image may be; both are checked from the file's header, before any pixel is decoded."""

    max_pixels: int
    formats: tuple[str, ...]  # Pillow format ids; Pillow tries no other decoder


@dataclass(frozen=True)
class VideoLimits:
    max_frames: int  # frames of one clip, from its header or as decoded
    max_frame_pixels: int  # width x height of one frame, from the container's or the array's header
    max_array_bytes: int  # an uploaded .npy/.npz array as its header declares it (a .npz inflates no further)
    containers: tuple[str, ...]  # "mp4", "webm", "avi": the only demuxers FFmpeg is allowed


@dataclass(frozen=True)
class AudioLimits:
    max_seconds: float  # duration from the header, before decoding
    max_sample_rate: int  # from the header; MIN_AUDIO_SAMPLE_RATE is the floor
    max_channels: int
    formats: tuple[str, ...]  # libsndfile major formats: "WAV", "FLAC", "OGG"


@dataclass(frozen=True)
class JobLimits:
    """Background jobs (`[server]` job settings; the defaults are theirs)."""

    max_running: int = 2  # jobs whose work runs at once (their units still share the model's queue)
    max_queued: int = 16  # accepted jobs waiting for a running slot
    result_ttl_s: float = 900.0  # a finished job (and its result) is kept this long
    max_result_bytes: int = 512 * 2**20  # results kept, all jobs together
    unit_timeout_s: float = 600.0  # a unit of a job's work may wait this long in the model's queue
    heartbeat_s: float = 30.0  # Redis store: a runner silent this long has its job claimed by another replica
    max_input_bytes: int = 1024 * 2**20  # Redis store: inputs of jobs not yet settled, all jobs together


@dataclass(frozen=True)
class ConnectionLimits:
    """What the connection guard (server.http.connections) holds connections to."""

    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_inputs: int
    max_text_bytes: int
    max_masks_per_text: int
    max_candidates: int
    max_response_bytes: int
    max_flow_side: int  # optical flow: a frame's side, as sent and as run
    decode_budget_bytes: int  # video decode: activations of one pass, all its items together
    flow_budget_bytes: int  # optical flow: activations of one forward pass, all its tiles together
    image: ImageLimits
    video: VideoLimits
    audio: AudioLimits
    jobs: JobLimits
    connections: ConnectionLimits

    @classmethod
    def of(cls, server: ServerSettings) -> Limits:
        return cls(
            max_body_bytes=int(server.max_body_mb * 2**20),
            max_inputs=server.max_inputs,
            max_text_bytes=server.max_text_bytes,
            max_masks_per_text=server.max_masks_per_text,
            max_candidates=server.max_candidates,
            max_response_bytes=int(server.max_response_mb * 2**20),
            max_flow_side=server.max_flow_side,
            decode_budget_bytes=int(server.decode_budget_mb * 2**20),
            flow_budget_bytes=int(server.flow_budget_mb * 2**20),
            image=ImageLimits(server.max_image_pixels, tuple(server.image_formats)),
            video=VideoLimits(
                server.max_video_frames,
                server.max_video_frame_pixels,
                int(server.max_array_mb * 2**20),
                tuple(server.video_containers),
            ),
            audio=AudioLimits(
                server.max_audio_seconds,
                server.max_audio_sample_rate,
                server.max_audio_channels,
                tuple(server.audio_formats),
            ),
            jobs=JobLimits(
                max_running=server.max_running_jobs,
                max_queued=server.max_queued_jobs,
                result_ttl_s=server.job_result_ttl_s,
                max_result_bytes=int(server.max_job_results_mb * 2**20),
                unit_timeout_s=server.job_unit_timeout_s,
                heartbeat_s=server.job_heartbeat_s,
                max_input_bytes=int(server.max_job_inputs_mb * 2**20),
            ),
            connections=ConnectionLimits(
                max_connections=server.max_connections,
                header_timeout_s=server.header_timeout_s,
                body_timeout_s=server.body_timeout_s,
                max_header_bytes=server.max_header_kb * 1024,
            ),
        )

    def check_inputs(self, count: int) -> None:
        if count > self.max_inputs:
            raise ServeError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"{count} inputs in one request; at most {self.max_inputs} (max_inputs)"
            )

    def check_texts(self, texts: Sequence[str]) -> None:
        """The count cap, then `max_text_bytes` per text (UTF-8), before any tokenizing."""
        self.check_inputs(len(texts))
        limit = self.max_text_bytes
        for i, text in enumerate(texts):
            size = len(text) if len(text) > limit else len(text.encode("utf-8", "surrogatepass"))
            if size > limit:
                where = f"inputs[{i}]: " if len(texts) > 1 else ""
                raise ServeError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"{where}text is over {limit} bytes (UTF-8; "
                    "max_text_bytes); split it or send it in several requests",
                )

    def check_candidates(self, count: int, what: str) -> None:
        """`count` ranked entries in one answer; `what` says how they multiply, e.g. "3 texts x 40 masks x top_k 5"."""
        if count > self.max_candidates:
            raise ServeError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                (
                    f"the answer would hold {count} ranked entries ({what}); at most {self.max_candidates} are "
                    "returned per request (max_candidates): lower top_k or send fewer inputs per request"
                ),
            )

    def check_answer(self, nbytes: int, what: str, hint: str) -> None:
        """An answer estimated at `nbytes` (`what` says of what); `hint` says how to ask for less."""
        if nbytes > self.max_response_bytes:
            raise ServeError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                (
                    f"the answer ({what}) would be about {_mib(nbytes)}; answers are limited to "
                    f"{_mib(self.max_response_bytes)} (max_response_mb): {hint}"
                ),
            )


DEFAULT_LIMITS = Limits.of(ServerSettings())


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"
