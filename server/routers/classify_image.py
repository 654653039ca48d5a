"""POST /classify-image: raw bytes, multipart upload, or JSON base64 (HF image-classification payload)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from server.deps import ModelParam, ServiceDep, TopKParam
from server.errors import ErrorCode, responses
from server.image_input import OPENAPI_BODY, read_image_request
from server.schemas import ClassifyImageResponse
from server.settings import Task
from server.tasks.image_classification import decode_image
from server.tasks.labels import as_labels

router = APIRouter(tags=["vision"])
ERRORS = responses(ErrorCode.BAD_REQUEST, ErrorCode.INVALID_INPUT, ErrorCode.PAYLOAD_TOO_LARGE,
                   ErrorCode.UNSUPPORTED_MEDIA_TYPE, ErrorCode.UNKNOWN_MODEL, ErrorCode.OVERLOADED,
                   ErrorCode.MODEL_UNAVAILABLE, ErrorCode.TIMEOUT)


@router.post("/classify-image", response_model=ClassifyImageResponse, responses=ERRORS, openapi_extra=OPENAPI_BODY,
             summary="Classify an image (ImageNet labels for the DeepMind models)")
async def classify_image(request: Request, response: Response, service: ServiceDep,
                         model: ModelParam = None, top_k: TopKParam = None) -> ClassifyImageResponse:
    data, params = await read_image_request(request, top_k=top_k)
    image = await service.decode(decode_image, data, service.limits.image)
    async with service.open(request, Task.IMAGE_CLASSIFICATION, model) as call:
        item = await run_in_threadpool(call.runner.prepare, image, top_k=params.top_k,
                                       function=params.function_to_apply)
        [result] = await call.infer([item])
        call.apply_headers(response)
    return ClassifyImageResponse(as_labels(result))
