"""POST /autoencode-video: a clip (multipart `video`, optional `audio`) -> Kinetics-700 labels per
window and/or the reconstructed video and audio; synchronous, or a background job with progress."""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from server import media
from server.deps import JobsDep, ModelParam, ServiceDep, TopKParam
from server.errors import ErrorCode, ServeError, responses
from server.jobs import JobResult, Progress
from server.routers.jobs import ACCEPTED, accepted
from server.schemas import LabelScore
from server.scope import STARTED_KEY
from server.serving import InferenceService
from server.settings import Task
from server.tasks.labels import as_labels
from server.uploads import read_form
from server.tasks.video_autoencoding import (
    DEFAULT_TOP_K,
    SAMPLE_RATE,
    AudioSource,
    Autoencoded,
    Clip,
    autoencode,
)

router = APIRouter(tags=["video"])
JOB_KIND = "autoencode-video"
JOB_STEP_TIMEOUT_S = 600.0  # a background job's unit of work may wait this long in the model's queue
Format = Literal["json", "npz", "mp4", "wav"]
_MEDIA_TYPES = {"json": "application/json", "npz": "application/x-npz", "mp4": "video/mp4", "wav": "audio/wav"}
_FORMATS = {  # (labels, reconstruction) -> formats allowed, the default first
    (True, False): ("json", "npz"),
    (False, True): ("npz", "mp4", "wav"),
    (True, True): ("npz",),
}
ERRORS = responses(ErrorCode.BAD_REQUEST, ErrorCode.INVALID_INPUT, ErrorCode.PAYLOAD_TOO_LARGE,
                   ErrorCode.UNSUPPORTED_MEDIA_TYPE, ErrorCode.UNKNOWN_MODEL, ErrorCode.NO_MODEL_FOR_TASK,
                   ErrorCode.OVERLOADED, ErrorCode.MODEL_UNAVAILABLE, ErrorCode.TIMEOUT)
OPENAPI_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["video"], "properties": {
        "video": {"type": "string", "format": "binary",
                  "description": ".npy/.npz uint8 frames (T x H x W x 3), or mp4/webm/avi (needs PyAV)"},
        "audio": {"type": "string", "format": "binary",
                  "description": "WAV/FLAC/OGG, any rate (resampled to 48 kHz), mixed to mono; silence if absent"},
    }}}}}}


class WindowLabels(BaseModel):
    start_frame: int = Field(description="First frame of the clip in this window")
    end_frame: int = Field(description="One past the last frame of the clip in this window")
    padded_frames: int = Field(description="Copies of the last frame that fill a short last window")
    labels: list[LabelScore] = Field(description="Kinetics-700 labels (the checkpoint's id2label), best first")


class AutoencodeVideoResponse(BaseModel):
    model: str
    frames: int = Field(description="Frames of the clip")
    window_frames: int = Field(description="Frames per window: the model's num_frames")
    audio: AudioSource = Field(description="`silence` when no audio part was sent")
    windows: list[WindowLabels]


OutputsParam = Annotated[str, Query(
    max_length=64, description="`labels`, `reconstruction`, or both, comma-separated")]
FormatParam = Annotated[Format | None, Query(alias="format", description=(
    "labels: json (default) or npz; reconstruction: npz (default), mp4 (video + audio track, needs PyAV) or wav "
    "(audio only); both: npz"))]
AsyncParam = Annotated[bool, Query(alias="async", description=(
    "Answer 202 with a job to poll (as the header Prefer: respond-async does)"))]


@dataclass(frozen=True)
class Wanted:
    labels: bool
    reconstruction: bool
    format: Format
    top_k: int


def parse_wanted(outputs: str, fmt: Format | None, top_k: int | None) -> Wanted:
    names = {part.strip() for part in outputs.split(",") if part.strip()}
    unknown = names - {"labels", "reconstruction"}
    if not names or unknown:
        raise ServeError(ErrorCode.INVALID_INPUT, f"outputs must list labels and/or reconstruction, got {outputs!r}")
    labels, reconstruction = "labels" in names, "reconstruction" in names
    allowed = _FORMATS[(labels, reconstruction)]
    if fmt is not None and fmt not in allowed:
        raise ServeError(ErrorCode.INVALID_INPUT, f"format={fmt} cannot carry outputs={','.join(sorted(names))}; "
                         f"use one of: {', '.join(allowed)}")
    chosen = fmt or allowed[0]
    if chosen == "mp4" and not media.pyav_available():
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "format=mp4 needs PyAV, which is not installed "
                         "(pip install 'perceiver-serve[video]'); use format=npz")
    return Wanted(labels, reconstruction, chosen, top_k or DEFAULT_TOP_K)


@router.post("/autoencode-video", response_model=AutoencodeVideoResponse, openapi_extra=OPENAPI_BODY,
             responses={200: {"content": {t: {} for t in _MEDIA_TYPES.values() if t != "application/json"},
                              "description": "Labels as JSON, or the reconstruction in the format asked for"},
                        **ACCEPTED, **ERRORS},
             summary="Labels and/or reconstruction of a video clip (+ audio) by the multimodal autoencoder")
async def autoencode_video(request: Request, service: ServiceDep, jobs: JobsDep, model: ModelParam = None,
                           outputs: OutputsParam = "labels", top_k: TopKParam = None, fmt: FormatParam = None,
                           run_async: AsyncParam = False,
                           prefer: Annotated[str | None, Header(include_in_schema=False)] = None) -> Response:
    wanted = parse_wanted(outputs, fmt, top_k)
    background = run_async or "respond-async" in (prefer or "").lower()
    if background:
        jobs.check_capacity()  # refuse before reading and decoding the clip
    video, audio = await _read_parts(request)
    async with service.open(request, Task.VIDEO_AUTOENCODING, model) as call:
        clip = await service.decode(call.runner.prepare, video, audio, video_limits=service.limits.video,
                                    audio_limits=service.limits.audio)
        call.runner.check_answer(clip, service.limits, labels=wanted.labels, reconstruct=wanted.reconstruction,
                                 top_k=wanted.top_k)
        name, units = call.entry.spec.name, call.runner.units(clip, reconstruct=wanted.reconstruction)
        if not background:
            result = await autoencode(call, clip, labels=wanted.labels, reconstruct=wanted.reconstruction,
                                      top_k=wanted.top_k)
            rendered = await run_in_threadpool(render, result, wanted, model=name)
            response = Response(rendered.body, media_type=rendered.media_type, headers=rendered.headers)
            call.apply_headers(response)
            return response

    async def work(progress: Progress) -> JobResult:
        return await _run_job(service, request, name, clip, wanted, progress)

    job = jobs.submit(JOB_KIND, work, total=units)
    return accepted(job, {"Preference-Applied": "respond-async"} if prefer and not run_async else None)


async def _run_job(service: InferenceService, request: Request, name: str, clip: Clip, wanted: Wanted,
                   progress: Progress) -> JobResult:
    async with service.open(_detached(request), Task.VIDEO_AUTOENCODING, name) as call:
        result = await autoencode(call, clip, labels=wanted.labels, reconstruct=wanted.reconstruction,
                                  top_k=wanted.top_k, progress=progress.update, step_timeout_s=JOB_STEP_TIMEOUT_S)
        random_weights = call.entry.spec.random_weights
    rendered = await run_in_threadpool(render, result, wanted, model=name)
    headers = {**rendered.headers, "X-Model": name}
    if random_weights:
        headers["X-Perceiver-Random-Weights"] = "true"
    return JobResult(rendered.body, rendered.media_type, headers)


def _detached(request: Request) -> Request:
    """A request for a job that outlives its HTTP exchange: no client to watch for a
    disconnect (cancel with DELETE /jobs/{id}), and its own start time."""

    async def receive() -> dict[str, Any]:
        return await asyncio.get_running_loop().create_future()  # never resolves: no connection to lose

    scope = {**request.scope, "state": {STARTED_KEY: time.monotonic()}}
    return Request(scope, receive)


async def _read_parts(request: Request) -> tuple[bytes, bytes | None]:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "multipart/form-data":
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {ctype or 'none'!r} is not accepted: send "
                         "multipart/form-data with a 'video' part and an optional 'audio' part")
    form = await read_form(request, max_files=2, max_fields=8)
    try:
        video, audio = form.get("video"), form.get("audio")
        if not isinstance(video, UploadFile):
            raise ServeError(ErrorCode.INVALID_INPUT, "multipart body has no 'video' file part")
        if audio is not None and not isinstance(audio, UploadFile):
            raise ServeError(ErrorCode.INVALID_INPUT, "the 'audio' part must be a file (WAV, FLAC or OGG)")
        return await video.read(), (await audio.read() if audio is not None else None)
    finally:
        await form.close()


@dataclass(frozen=True)
class Rendered:
    body: bytes
    media_type: str
    headers: dict[str, str]


def render(result: Autoencoded, wanted: Wanted, *, model: str) -> Rendered:
    """The answer in the format asked for. CPU work (mp4 encoding): call off the event loop."""
    windows = [WindowLabels(start_frame=w.start, end_frame=w.end, padded_frames=w.padded,
                            labels=as_labels(w.labels)) for w in result.windows]
    headers = {"X-Clip-Frames": str(result.frames), "X-Clip-Windows": str(len(windows)),
               "X-Padded-Frames": str(result.windows[-1].padded), "X-Audio-Input": result.audio_source}
    if wanted.format == "json":
        body = AutoencodeVideoResponse(model=model, frames=result.frames, window_frames=result.window_frames,
                                       audio=result.audio_source, windows=windows)
        return Rendered(body.model_dump_json().encode(), _MEDIA_TYPES["json"], headers)
    if wanted.format == "wav":
        assert result.audio is not None
        body_bytes = media.write_wav(result.audio, SAMPLE_RATE)
    elif wanted.format == "mp4":
        assert result.video is not None
        body_bytes = media.write_mp4(result.video, result.audio, fps=result.fps, sample_rate=SAMPLE_RATE)
    else:
        body_bytes = _npz(result, windows, labels=wanted.labels)
    headers["Content-Disposition"] = f'attachment; filename="autoencoded.{wanted.format}"'
    return Rendered(body_bytes, _MEDIA_TYPES[wanted.format], headers)


def _npz(result: Autoencoded, windows: list[WindowLabels], *, labels: bool) -> bytes:
    """video (T, H, W, 3) uint8, audio (N,) float32, sample_rate, windows (W, 3) [start, end,
    padded], and with labels a (W,) string array: one JSON list of {label, score} per window."""
    arrays: dict[str, np.ndarray] = {
        "sample_rate": np.array(SAMPLE_RATE, dtype=np.int64),
        "windows": np.array([[w.start_frame, w.end_frame, w.padded_frames] for w in windows], dtype=np.int64),
    }
    if result.video is not None and result.audio is not None:
        arrays["video"], arrays["audio"] = result.video, result.audio
    if labels:
        arrays["labels"] = np.array([json.dumps([s.model_dump() for s in w.labels]) for w in windows], dtype=np.str_)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
