"""POST /fill-mask (Hugging Face Inference API payload, `targets` included)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.deps import ModelParam, ServiceDep
from server.errors import SERVING, TEXT_INPUT, prepare_each, responses
from server.http.bodies import JSONBodyRoute
from server.http.exchange import json_answer, open_call
from server.http.schemas import FillMaskRequest, FillMaskResponse
from server.settings import Task
from server.tasks.fill_mask import FillMaskItem, FillMaskRunner, check_answer

router = APIRouter(tags=["text"], route_class=JSONBodyRoute)
ERRORS = responses(*TEXT_INPUT, *SERVING)


@router.post(
    "/fill-mask", response_model=FillMaskResponse, responses=ERRORS, summary="Predict the byte behind each [MASK]"
)
async def fill_mask(body: FillMaskRequest, request: Request, service: ServiceDep, model: ModelParam = None) -> Response:
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    targets = [body.parameters.targets] if isinstance(body.parameters.targets, str) else body.parameters.targets
    limits = service.limits
    limits.check_texts(texts)
    async with open_call(request, service, Task.FILL_MASK, model) as call:
        runner = call.runner_as(FillMaskRunner)

        def prepare(text: str) -> FillMaskItem:
            item = runner.prepare(text, max_masks=limits.max_masks_per_text)
            if targets is not None:
                runner.check_targets(item, targets)
            return item

        with call.step("decode", step="tokenize"):
            items = prepare_each(texts, prepare)
        top_k = runner.top_k(body.parameters.top_k)
        entries = check_answer(items, limits, top_k=top_k, targets=targets)  # before the model runs
        results = await call.infer(items)

    def build() -> object:
        answers = [
            runner.respond(item, logits, top_k=top_k)
            if targets is None
            else runner.respond_targets(item, logits, targets, top_k=top_k)
            for item, logits in zip(items, results, strict=True)
        ]
        return answers[0] if isinstance(body.inputs, str) else answers

    return await json_answer(build, entries=entries, call=call)
