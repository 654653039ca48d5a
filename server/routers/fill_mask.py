"""POST /fill-mask (Hugging Face Inference API payload)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.deps import ModelParam, ServiceDep
from server.errors import ErrorCode, responses
from server.schemas import FillMaskRequest, FillMaskResponse
from server.serving import json_answer, prepare_each
from server.settings import Task
from server.tasks.fill_mask import FillMaskRunner, check_answer
from server.uploads import JSONBodyRoute

router = APIRouter(tags=["text"], route_class=JSONBodyRoute)
ERRORS = responses(ErrorCode.INVALID_INPUT, ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.UNKNOWN_MODEL,
                   ErrorCode.OVERLOADED, ErrorCode.MODEL_UNAVAILABLE, ErrorCode.TIMEOUT)


@router.post("/fill-mask", response_model=FillMaskResponse, responses=ERRORS,
             summary="Predict the byte behind each [MASK]")
async def fill_mask(body: FillMaskRequest, request: Request, service: ServiceDep,
                    model: ModelParam = None) -> Response:
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    service.check_texts(texts)
    limits = service.limits
    async with service.open(request, Task.FILL_MASK, model) as call:
        runner: FillMaskRunner = call.runner
        items = prepare_each(texts, lambda text: runner.prepare(text, top_k=body.parameters.top_k,
                                                                max_masks=limits.max_masks_per_text))
        entries = check_answer(items, limits)  # before the model runs
        results = await call.infer(items)

    def build() -> object:
        answers = [runner.respond(item, result) for item, result in zip(items, results, strict=True)]
        return answers[0] if isinstance(body.inputs, str) else answers

    response = await json_answer(build, entries=entries)
    call.apply_headers(response)
    return response
