"""POST /classify-text (Hugging Face Inference API payload: text-classification)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.deps import ModelParam, ServiceDep
from server.errors import SERVING, TEXT_INPUT, prepare_each, responses
from server.http.bodies import JSONBodyRoute
from server.http.exchange import json_answer, open_call
from server.http.schemas import ClassifyTextRequest, ClassifyTextResponse
from server.settings import Task
from server.tasks.labels import as_labels
from server.tasks.text_classification import TextClassificationRunner

router = APIRouter(tags=["text"], route_class=JSONBodyRoute)
ERRORS = responses(*TEXT_INPUT, *SERVING)


@router.post(
    "/classify-text",
    response_model=ClassifyTextResponse,
    responses=ERRORS,
    summary="Classify text; one list of labels per input",
)
async def classify_text(
    body: ClassifyTextRequest, request: Request, service: ServiceDep, model: ModelParam = None
) -> Response:
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    service.limits.check_texts(texts)
    params = body.parameters
    async with open_call(request, service, Task.TEXT_CLASSIFICATION, model) as call:
        runner = call.runner_as(TextClassificationRunner)
        with call.step("decode", step="tokenize"):
            items = prepare_each(texts, runner.prepare)
        entries = runner.labels.check(
            service.limits, rows=len(items), top_k=params.top_k or len(runner.labels), what="texts"
        )
        results = await call.infer(items)

    def build() -> object:
        return [as_labels(runner.respond(r, top_k=params.top_k, function=params.function_to_apply)) for r in results]

    return await json_answer(build, entries=entries, call=call)
