"""POST /classify-text (Hugging Face Inference API payload: text-classification)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.deps import ModelParam, ServiceDep
from server.errors import ErrorCode, responses
from server.schemas import ClassifyTextRequest, ClassifyTextResponse
from server.serving import json_answer, prepare_each
from server.settings import Task
from server.tasks.labels import as_labels, check_labels
from server.tasks.text_classification import TextClassificationRunner
from server.uploads import JSONBodyRoute

router = APIRouter(tags=["text"], route_class=JSONBodyRoute)
ERRORS = responses(ErrorCode.INVALID_INPUT, ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.NO_MODEL_FOR_TASK,
                   ErrorCode.OVERLOADED, ErrorCode.MODEL_UNAVAILABLE, ErrorCode.TIMEOUT)


@router.post("/classify-text", response_model=ClassifyTextResponse, responses=ERRORS,
             summary="Classify text; one list of labels per input")
async def classify_text(body: ClassifyTextRequest, request: Request, service: ServiceDep,
                        model: ModelParam = None) -> Response:
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    service.check_texts(texts)
    params = body.parameters
    async with service.open(request, Task.TEXT_CLASSIFICATION, model) as call:
        runner: TextClassificationRunner = call.runner
        items = prepare_each(texts, lambda t: runner.prepare(t, top_k=params.top_k, function=params.function_to_apply))
        entries = check_labels(service.limits, rows=len(items), top_k=items[0].top_k, entry_bytes=runner.entry_bytes,
                               what="texts")
        results = await call.infer(items)
    response = await json_answer(lambda: [as_labels(r) for r in results], entries=entries)
    call.apply_headers(response)
    return response
