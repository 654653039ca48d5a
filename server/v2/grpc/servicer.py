"""`inference.GRPCInferenceService`: each method answers from the same functions as its HTTP route (server/v2/), its
JSON turned into the message (`from_dict`). Methods not here (streaming, shared memory, trace and log settings)
answer UNIMPLEMENTED, and the server metadata does not advertise them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf.message import Message
from starlette.concurrency import run_in_threadpool

from server.engine.serving import Call
from server.http.exchange import answer_headers
from server.routers.health import liveness_error
from server.settings import ModelSpec
from server.v2 import inference, repository
from server.v2 import service as v2
from server.v2.config import model_config
from server.v2.grpc.calls import Behavior, CallInfo, Front, handler
from server.v2.grpc.messages import SERVICE, SERVICE_NAME, from_dict, message_class, parameters, read_request
from server.v2.grpc.messages import write_response as infer_response
from server.v2.messages import check_rows
from server.v2.statistics import model_statistics

PROBES = frozenset({"ServerLive", "ServerReady"})  # open without a key, as /v2/health/* are


class Servicer:
    def __init__(self, front: Front) -> None:
        self.front, self.service = front, front.service
        self.registry, self.settings = front.service.registry, front.service.settings

    async def ServerLive(self, request: Any, call: CallInfo) -> Message:
        live = liveness_error(self.registry, self.settings, detailed=False) is None
        return message_class("ServerLiveResponse")(live=live)

    async def ServerReady(self, request: Any, call: CallInfo) -> Message:
        return message_class("ServerReadyResponse")(ready=self.front.lifecycle.not_ready() is None)

    async def ModelReady(self, request: Any, call: CallInfo) -> Message:
        ready = v2.not_ready(self.registry, request.name, request.version) is None
        return message_class("ModelReadyResponse")(ready=ready)

    async def ServerMetadata(self, request: Any, call: CallInfo) -> Message:
        return from_dict("ServerMetadataResponse", v2.server_metadata(self.front.version).model_dump())

    async def ModelMetadata(self, request: Any, call: CallInfo) -> Message:
        metadata = v2.model_metadata(self.registry, request.name, request.version)
        return from_dict("ModelMetadataResponse", metadata.model_dump())

    async def ModelConfig(self, request: Any, call: CallInfo) -> Message:
        return from_dict("ModelConfigResponse", {"config": model_config(self.registry, request.name, request.version)})

    async def ModelStatistics(self, request: Any, call: CallInfo) -> Message:
        stats = model_statistics(self.settings, self.front.metrics, request.name, request.version)
        return from_dict("ModelStatisticsResponse", stats)

    async def RepositoryIndex(self, request: Any, call: CallInfo) -> Message:
        return from_dict("RepositoryIndexResponse", {"models": repository.index(self.registry, ready=request.ready)})

    async def RepositoryModelLoad(self, request: Any, call: CallInfo) -> Message:
        deadline = call.deadline(self.service)
        await repository.load(self.service, request.model_name, parameters(request.parameters), deadline=deadline)
        return message_class("RepositoryModelLoadResponse")()

    async def RepositoryModelUnload(self, request: Any, call: CallInfo) -> Message:
        await repository.unload(self.registry, request.model_name, parameters(request.parameters))
        return message_class("RepositoryModelUnloadResponse")()

    async def ModelInfer(self, request: Any, call: CallInfo) -> Message:
        spec = v2.find_model(self.settings, request.model_name, request.model_version)
        call.serves(spec.name)
        payload, inputs = await run_in_threadpool(read_request, request)
        check_rows(inputs, self.service.limits.max_inputs)

        @asynccontextmanager
        async def opened(model: ModelSpec, timeout_s: float | None) -> AsyncIterator[Call]:
            deadline = call.deadline(self.service, timeout_s, model)
            async with self.service.open(model, deadline=deadline, disconnected=call.disconnected()) as opened:
                yield opened

        answer = await inference.infer(self.service, spec, payload, inputs, opened, all_binary=True)
        call.engine = answer.call
        call.context.set_trailing_metadata(tuple((k.lower(), v) for k, v in answer_headers(answer.call).items()))
        return await run_in_threadpool(infer_response, answer, v2.VERSION)


IMPLEMENTED = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
)


def service_handler(front: Front) -> grpc.GenericRpcHandler:
    servicer = Servicer(front)
    methods = {}
    for name in IMPLEMENTED:
        descriptor = SERVICE.methods_by_name[name]
        behavior: Behavior = getattr(servicer, name)
        request, response = (message_class(t.name) for t in (descriptor.input_type, descriptor.output_type))
        methods[name] = handler(front, name, behavior, request, response, probe=name in PROBES)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)
