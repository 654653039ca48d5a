"""POST /autoencode-video: a clip (multipart `video`, optional `audio`) -> Kinetics-700 labels per
window and/or the reconstructed video and audio; synchronous, or a background job with progress.

A job is stored as its input (the uploaded files) and its query (`VideoJob`), so that any replica can run it
from the start: the upload is decoded and checked here, at submit, and decoded again where the job runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from server.deps import JobsDep, ModelParam, OwnerDep, ServiceDep, TopKParam
from server.engine.jobs import JobKind, JobRequest, JobResult, Progress
from server.engine.serving import Call
from server.errors import FILE_INPUT, SERVING, ErrorCode, responses
from server.http.bodies import CLIP_BODY, read_clip
from server.http.exchange import answer_headers, open_call
from server.http.schemas import AutoencodeVideoResponse
from server.routers.jobs import ACCEPTED, accepted
from server.settings import Task
from server.tasks.video_autoencoding import Clip, VideoAutoencodingRunner, autoencode
from server.tasks.video_output import MEDIA_TYPES, Format, Wanted, parse_wanted, render

router = APIRouter(tags=["video"])
ERRORS = responses(*FILE_INPUT, *SERVING, ErrorCode.JOBS_UNAVAILABLE)
OutputsParam = Annotated[str, Query(max_length=64, description="`labels`, `reconstruction`, or both, comma-separated")]
FormatParam = Annotated[
    Format | None,
    Query(
        alias="format",
        description=(
            "labels: json (default) or npz; reconstruction: npz (default), mp4 (video + audio track, needs PyAV) "
            "or wav (audio only); both: npz"
        ),
    ),
]
AsyncParam = Annotated[
    bool, Query(alias="async", description=("Answer 202 with a job to poll (as the header Prefer: respond-async does)"))
]


@router.post(
    "/autoencode-video",
    response_model=AutoencodeVideoResponse,
    openapi_extra=CLIP_BODY,
    responses={
        200: {
            "content": {t: {} for t in MEDIA_TYPES.values() if t != "application/json"},
            "description": "Labels as JSON, or the reconstruction in the format asked for",
        },
        **ACCEPTED,
        **ERRORS,
    },
    summary="Labels and/or reconstruction of a video clip (+ audio) by the multimodal autoencoder",
)
async def autoencode_video(
    request: Request,
    service: ServiceDep,
    jobs: JobsDep,
    owner: OwnerDep,
    model: ModelParam = None,
    outputs: OutputsParam = "labels",
    top_k: TopKParam = None,
    fmt: FormatParam = None,
    run_async: AsyncParam = False,
    prefer: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    wanted = parse_wanted(outputs, fmt, top_k)
    background = run_async or "respond-async" in (prefer or "").lower()
    if background:
        await jobs.admit()  # refuse before reading and decoding the clip
    video, audio = await read_clip(request)
    limits = service.limits
    async with open_call(request, service, Task.VIDEO_AUTOENCODING, model) as call:
        runner: VideoAutoencodingRunner = call.runner
        clip = await call.decode(runner.prepare, video, audio, video_limits=limits.video, audio_limits=limits.audio)
        size = runner.check_answer(
            clip, limits, labels=wanted.labels, reconstruct=wanted.reconstruction, top_k=wanted.top_k
        )
        if not background:
            answer = await _answer(call, clip, wanted)
            return Response(answer.body, media_type=answer.media_type, headers=answer.headers)
        job = await jobs.enqueue(
            JobRequest(
                kind=JOB.name,
                model=call.entry.spec.name,
                params=VideoJob(outputs=outputs, format=fmt, top_k=top_k).model_dump(),
                inputs={"video": video} if audio is None else {"video": video, "audio": audio},
                total=runner.units(clip, reconstruct=wanted.reconstruction),
                result_bytes=size,
            ),
            owner=owner,
        )
    return accepted(job, {"Preference-Applied": "respond-async"} if prefer and not run_async else None)


class VideoJob(BaseModel):
    """A video job's parameters, as stored: the route's query."""

    outputs: str
    format: Format | None = None
    top_k: int | None = None


async def _run_job(call: Call, request: JobRequest, progress: Progress) -> JobResult:
    """A stored video job, run from the start: decode the clip again, then answer as the synchronous route."""
    query = VideoJob.model_validate(request.params)
    wanted = parse_wanted(query.outputs, query.format, query.top_k)
    runner = call.runner_as(VideoAutoencodingRunner)
    limits = call.limits
    video, audio = request.inputs["video"], request.inputs.get("audio")
    clip = await call.decode(runner.prepare, video, audio, video_limits=limits.video, audio_limits=limits.audio)
    return await _answer(call, clip, wanted, progress)


JOB = JobKind("autoencode-video", Task.VIDEO_AUTOENCODING, _run_job)


async def _answer(call: Call, clip: Clip, wanted: Wanted, progress: Progress | None = None) -> JobResult:
    result = await autoencode(
        call,
        clip,
        labels=wanted.labels,
        reconstruct=wanted.reconstruction,
        top_k=wanted.top_k,
        progress=progress.update if progress is not None else None,
    )
    with call.step("encode"):
        rendered = await run_in_threadpool(render, result, wanted, model=call.entry.spec.name)
    return JobResult(rendered.body, rendered.media_type, {**rendered.headers, **answer_headers(call)})
