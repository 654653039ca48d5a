"""The HTTP side of the protocol's inference: the body in (JSON, or JSON + Triton binary tensor data, gzip or deflate;
parsed in the body-parsing helper process when large), the body out, and the answer's headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from server.engine.serving import Call, InferenceService
from server.http.exchange import answer_headers, open_call
from server.settings import ModelSpec
from server.v2 import inference
from server.v2.messages import decode_body, write_response
from server.v2.protocol import HEADER_LENGTH
from server.v2.service import VERSION, find_model


async def infer(request: Request, service: InferenceService, name: str, version: str | None) -> Response:
    spec = find_model(service.settings, name, version)
    body, headers = await request.body(), request.headers
    encoding = headers.get("content-encoding")
    payload, inputs = await request.app.state.offload.run(
        decode_body,
        body,
        encoding,
        headers.get(HEADER_LENGTH),
        max_body_bytes=service.limits.max_body_bytes,
        max_rows=service.limits.max_inputs,
        cost=None if encoding in (None, "identity") else service.limits.max_body_bytes,
    )

    @asynccontextmanager
    async def opened(model: ModelSpec, timeout_s: float | None) -> AsyncIterator[Call]:
        async with open_call(request, service, model.task, model.name, timeout_s=timeout_s) as call:
            yield call

    answer = await inference.infer(service, spec, payload, inputs, opened)
    with answer.call.step("encode"):
        content, json_length = await run_in_threadpool(
            write_response, answer.model, VERSION, answer.request_id, answer.outputs
        )
    answered = answer_headers(answer.call)
    if json_length is not None:
        answered[HEADER_LENGTH] = str(json_length)
    media = "application/json" if json_length is None else "application/octet-stream"
    return Response(content, media_type=media, headers=answered)
