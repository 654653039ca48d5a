"""POST /optical-flow: two frames (multipart or JSON base64) -> their flow field as npy, flo, png or json;
synchronous, or a background job whose progress is counted in tiles.

A job is stored as its input (the two uploaded frames) and its format (`FlowJob`), so that any replica can run it
from the start: the frames are decoded and checked here, at submit, and decoded again where the job runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from server.deps import JobsDep, ModelParam, OwnerDep, ServiceDep
from server.engine.jobs import JobKind, JobRequest, JobResult, Progress
from server.engine.serving import Call
from server.errors import FILE_INPUT, SERVING, ErrorCode, responses
from server.http.bodies import FRAME_PAIR_BODY, read_frame_pair
from server.http.exchange import answer_headers, open_call
from server.media.flow import FORMAT_VALUE_BYTES, MEDIA_TYPES, OPENAPI_CONTENT, FlowFormat, encode_flow, negotiate
from server.routers.jobs import ACCEPTED, accepted
from server.settings import Task
from server.tasks.optical_flow import (
    OpticalFlowRunner,
    check_answer,
    check_tiles,
    decode_frame_pair,
    estimate_flow,
    flow_image_limits,
    probe_frames,
)

router = APIRouter(tags=["vision"])
ERRORS = responses(*FILE_INPUT, *SERVING, ErrorCode.JOBS_UNAVAILABLE)
FormatParam = Annotated[
    FlowFormat | None, Query(alias="format", description="Output format; overrides the Accept header (default npy)")
]
AsyncParam = Annotated[
    bool, Query(alias="async", description="Answer 202 with a job to poll (as the header Prefer: respond-async does)")
]


@router.post(
    "/optical-flow",
    response_class=Response,
    openapi_extra=FRAME_PAIR_BODY,
    responses={
        200: {
            "description": "The flow from frame1 to frame2, (H, W, 2) float32 in pixels: "
            "[..., 0] horizontal, [..., 1] vertical",
            "content": OPENAPI_CONTENT,
        },
        **ACCEPTED,
        **ERRORS,
    },
    summary="Optical flow between two frames of the same size (tiled over large frames)",
)
async def optical_flow(
    request: Request,
    service: ServiceDep,
    jobs: JobsDep,
    owner: OwnerDep,
    model: ModelParam = None,
    output: FormatParam = None,
    run_async: AsyncParam = False,
    prefer: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    fmt = negotiate(output, request.headers.get("accept"))
    background = run_async or "respond-async" in (prefer or "").lower()
    if background:
        await jobs.admit()  # refuse before reading and decoding the frames
    data1, data2 = await read_frame_pair(request)
    size = await service.decode(probe_frames, data1, data2, service.limits)  # headers only, before the model
    answer_bytes = check_answer(
        service.limits,
        size,
        value_bytes=FORMAT_VALUE_BYTES[fmt],
        hint="send smaller frames" + ("" if fmt is FlowFormat.NPY else ", or ask for format=npy"),
    )
    frame1, frame2 = await decode_frame_pair(service.decode, data1, data2, flow_image_limits(service.limits))
    async with open_call(request, service, Task.OPTICAL_FLOW, model) as call:
        if not background:
            flow = await estimate_flow(call, frame1, frame2)
        else:
            runner = call.runner_as(OpticalFlowRunner)
            tiles = runner.tile_count(size[::-1])
            check_tiles(call, size[::-1], tiles)
            job = await jobs.enqueue(
                JobRequest(
                    kind=JOB.name,
                    model=call.entry.spec.name,
                    params=FlowJob(format=fmt).model_dump(mode="json"),
                    inputs={"frame1": data1, "frame2": data2},
                    total=tiles,
                    result_bytes=answer_bytes,
                ),
                owner=owner,
            )
            return accepted(job, {"Preference-Applied": "respond-async"} if prefer and not run_async else None)
    with call.step("encode", format=fmt.value):
        content = await run_in_threadpool(encode_flow, flow, fmt)
    return Response(content, media_type=MEDIA_TYPES[fmt], headers=answer_headers(call))


class FlowJob(BaseModel):
    """A flow job's parameters, as stored: the format negotiated at submit."""

    format: FlowFormat


async def _run_job(call: Call, request: JobRequest, progress: Progress) -> JobResult:
    """A stored flow job, run from the start: decode the frames again, then answer as the synchronous route, each
    tile a unit of work."""
    fmt = FlowJob.model_validate(request.params).format
    call.runner_as(OpticalFlowRunner)
    data1, data2 = request.inputs["frame1"], request.inputs["frame2"]
    frame1, frame2 = await decode_frame_pair(call.decode, data1, data2, flow_image_limits(call.limits))
    flow = await estimate_flow(call, frame1, frame2, progress=progress.update)
    with call.step("encode", format=fmt.value):
        content = await run_in_threadpool(encode_flow, flow, fmt)
    return JobResult(content, MEDIA_TYPES[fmt], answer_headers(call))


JOB = JobKind("optical-flow", Task.OPTICAL_FLOW, _run_job)
