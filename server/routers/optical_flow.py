"""POST /optical-flow: two frames (multipart or JSON base64) -> their flow field as npy, flo, png or json."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from server.deps import ModelParam, ServiceDep
from server.errors import ErrorCode, responses
from server.flow_formats import MEDIA_TYPES, OPENAPI_CONTENT, FlowFormat, encode_flow, negotiate
from server.flow_input import OPENAPI_BODY, decode_frames, read_frame_pair
from server.settings import Task
from server.limits import ImageLimits
from server.tasks.optical_flow import MAX_SIDE, check_frames, estimate_flow

router = APIRouter(tags=["vision"])
ERRORS = responses(ErrorCode.BAD_REQUEST, ErrorCode.INVALID_INPUT, ErrorCode.PAYLOAD_TOO_LARGE,
                   ErrorCode.UNSUPPORTED_MEDIA_TYPE, ErrorCode.UNKNOWN_MODEL, ErrorCode.NO_MODEL_FOR_TASK,
                   ErrorCode.OVERLOADED, ErrorCode.MODEL_UNAVAILABLE, ErrorCode.TIMEOUT)
FormatParam = Annotated[FlowFormat | None, Query(
    alias="format", description="Output format; overrides the Accept header (default npy)")]


@router.post("/optical-flow", response_class=Response, openapi_extra=OPENAPI_BODY,
             responses={200: {"description": "The flow from frame1 to frame2, (H, W, 2) float32 in pixels: "
                                             "[..., 0] horizontal, [..., 1] vertical", "content": OPENAPI_CONTENT},
                        **ERRORS},
             summary="Optical flow between two frames of the same size (tiled over large frames)")
async def optical_flow(request: Request, service: ServiceDep, model: ModelParam = None,
                       output: FormatParam = None) -> Response:
    fmt = negotiate(output, request.headers.get("accept"))
    data1, data2 = await read_frame_pair(request)
    limits = service.limits.image  # a side over MAX_SIDE is refused before decoding, too
    limits = ImageLimits(min(limits.max_pixels, MAX_SIDE * MAX_SIDE), limits.formats)
    frame1, frame2 = await service.decode(decode_frames, data1, data2, limits)
    check_frames(frame1, frame2)  # before a model is loaded or waited for
    async with service.open(request, Task.OPTICAL_FLOW, model) as call:
        flow = await estimate_flow(call, frame1, frame2)
        response = Response(await run_in_threadpool(encode_flow, flow, fmt), media_type=MEDIA_TYPES[fmt])
        call.apply_headers(response)
    return response
