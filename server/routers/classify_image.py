"""POST /classify-image: raw bytes, multipart upload, or JSON base64 (HF image-classification payload)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.deps import ModelParam, ServiceDep, TopKParam
from server.errors import FILE_INPUT, SERVING, responses
from server.http.bodies import IMAGE_BODY, read_image
from server.http.exchange import json_answer, open_call
from server.http.schemas import ClassifyImageResponse
from server.media.image import probe_image
from server.settings import Task
from server.tasks.image_classification import ImageClassificationRunner
from server.tasks.labels import DEFAULT_TOP_K, as_labels

router = APIRouter(tags=["vision"])
ERRORS = responses(*FILE_INPUT, *SERVING)


@router.post(
    "/classify-image",
    response_model=ClassifyImageResponse,
    responses=ERRORS,
    openapi_extra=IMAGE_BODY,
    summary="Classify an image (ImageNet labels for the DeepMind models)",
)
async def classify_image(
    request: Request, service: ServiceDep, model: ModelParam = None, top_k: TopKParam = None
) -> Response:
    data, params = await read_image(request, top_k=top_k)
    limits = service.limits
    await service.decode(probe_image, data, limits.image)  # format and size from the header, before the model
    async with open_call(request, service, Task.IMAGE_CLASSIFICATION, model) as call:
        runner = call.runner_as(ImageClassificationRunner)
        entries = runner.labels.check(limits, rows=1, top_k=params.top_k or DEFAULT_TOP_K, what="images")
        item = await call.decode(runner.prepare_file, data, limits.image)
        [logits] = await call.infer([item])
    return await json_answer(
        lambda: as_labels(runner.respond(logits, top_k=params.top_k, function=params.function_to_apply)),
        entries=entries,
        call=call,
    )
