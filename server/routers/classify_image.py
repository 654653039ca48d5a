"""POST /classify-image: raw bytes, multipart upload, or JSON base64 (HF image-classification payload)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.deps import ModelParam, ServiceDep, TopKParam
from server.errors import ErrorCode, responses
from server.image_input import OPENAPI_BODY, read_image_request
from server.schemas import ClassifyImageResponse
from server.serving import json_answer
from server.settings import Task
from server.tasks.image_classification import ImageClassificationRunner, probe_image
from server.tasks.labels import as_labels, check_labels

router = APIRouter(tags=["vision"])
ERRORS = responses(ErrorCode.BAD_REQUEST, ErrorCode.INVALID_INPUT, ErrorCode.PAYLOAD_TOO_LARGE,
                   ErrorCode.UNSUPPORTED_MEDIA_TYPE, ErrorCode.UNKNOWN_MODEL, ErrorCode.OVERLOADED,
                   ErrorCode.MODEL_UNAVAILABLE, ErrorCode.TIMEOUT)


@router.post("/classify-image", response_model=ClassifyImageResponse, responses=ERRORS, openapi_extra=OPENAPI_BODY,
             summary="Classify an image (ImageNet labels for the DeepMind models)")
async def classify_image(request: Request, service: ServiceDep, model: ModelParam = None,
                         top_k: TopKParam = None) -> Response:
    data, params = await read_image_request(request, top_k=top_k)
    limits = service.limits
    await service.decode(probe_image, data, limits.image)  # format and size from the header, before the model
    async with service.open(request, Task.IMAGE_CLASSIFICATION, model) as call:
        runner: ImageClassificationRunner = call.runner
        item = await call.decode(runner.prepare_file, data, limits.image, top_k=params.top_k,
                                 function=params.function_to_apply)
        entries = check_labels(limits, rows=1, top_k=item.top_k, entry_bytes=runner.entry_bytes, what="images")
        [result] = await call.infer([item])
    response = await json_answer(lambda: as_labels(result), entries=entries)
    call.apply_headers(response)
    return response
