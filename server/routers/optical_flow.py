"""POST /optical-flow: two frames (multipart or JSON base64) -> their flow field as npy, flo, png or json."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from server.deps import ModelParam, ServiceDep
from server.errors import FILE_INPUT, SERVING, responses
from server.http.bodies import FRAME_PAIR_BODY, read_frame_pair
from server.http.exchange import answer_headers, open_call
from server.media.flow import FORMAT_VALUE_BYTES, MEDIA_TYPES, OPENAPI_CONTENT, FlowFormat, encode_flow, negotiate
from server.settings import Task
from server.tasks.optical_flow import check_answer, decode_frame_pair, estimate_flow, flow_image_limits, probe_frames

router = APIRouter(tags=["vision"])
ERRORS = responses(*FILE_INPUT, *SERVING)
FormatParam = Annotated[
    FlowFormat | None, Query(alias="format", description="Output format; overrides the Accept header (default npy)")
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
        **ERRORS,
    },
    summary="Optical flow between two frames of the same size (tiled over large frames)",
)
async def optical_flow(
    request: Request, service: ServiceDep, model: ModelParam = None, output: FormatParam = None
) -> Response:
    fmt = negotiate(output, request.headers.get("accept"))
    data1, data2 = await read_frame_pair(request)
    size = await service.decode(probe_frames, data1, data2, service.limits)  # headers only, before the model
    check_answer(
        service.limits,
        size,
        value_bytes=FORMAT_VALUE_BYTES[fmt],
        hint="send smaller frames" + ("" if fmt is FlowFormat.NPY else ", or ask for format=npy"),
    )
    frame1, frame2 = await decode_frame_pair(service.decode, data1, data2, flow_image_limits(service.limits))
    async with open_call(request, service, Task.OPTICAL_FLOW, model) as call:
        flow = await estimate_flow(call, frame1, frame2)
    with call.step("encode", format=fmt.value):
        content = await run_in_threadpool(encode_flow, flow, fmt)
    return Response(content, media_type=MEDIA_TYPES[fmt], headers=answer_headers(call))
