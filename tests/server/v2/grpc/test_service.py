"""The gRPC front end in-process (the app's lifespan starts it), through tritonclient.grpc.aio: keys in metadata,
draining, deadlines, message size caps, errors as gRPC statuses, metrics shared with HTTP, and grpc.health.v1."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from server.app import build_app
from server.observability.logs import ACCESS_LOGGER
from server.settings import Settings
from tests.server.conftest import free_port
from tests.server.support import open_client

pytestmark = pytest.mark.anyio
KEY = "k3y-Grpc-0123456789abcdefgh"
INFER = "/inference.GRPCInferenceService/ModelInfer"


def text(*texts: str) -> InferInput:
    return InferInput("text", [len(texts)], "BYTES").set_data_from_numpy(np.array([t.encode() for t in texts], object))


@asynccontextmanager
async def serving(settings: Settings, **options: Any) -> AsyncIterator[tuple[Any, triton.InferenceServerClient]]:
    """The app (lifespan run: its gRPC server up) and an asyncio tritonclient on its gRPC port."""
    app = build_app(settings, **options)
    async with open_client(app) as http:
        client = triton.InferenceServerClient(f"127.0.0.1:{settings.server.grpc_port}")
        try:
            yield app, client, http
        finally:
            await client.close()


def grpc_settings(make_settings: Callable[..., Settings], **server: Any) -> Settings:
    return make_settings(server={"grpc_port": free_port(), **server}, max_delay_ms=0)


async def status_of(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        await call
    return info.value.status(), str(info.value)


async def test_keys_travel_in_metadata_and_the_probes_stay_open(make_settings: Callable[..., Settings]) -> None:
    async with serving(grpc_settings(make_settings, api_keys=[KEY])) as (_, client, _http):
        assert await client.is_server_live() and await client.is_server_ready()
        status, message = await status_of(client.get_model_metadata("mlm"))
        assert status == "StatusCode.UNAUTHENTICATED" and "API key is required" in message
        status, message = await status_of(client.get_model_metadata("mlm", headers={"x-api-key": KEY + "x"}))
        assert status == "StatusCode.UNAUTHENTICATED" and "not valid" in message
        for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            assert (await client.get_model_metadata("mlm", headers=headers)).name == "mlm"


async def test_errors_deadlines_and_metrics(make_settings: Callable[..., Settings], gate, read_metric) -> None:
    async with serving(grpc_settings(make_settings), loader=gate.loader) as (app, client, http):
        await client.load_model("mlm")
        status, message = await status_of(client.infer("nope", [text("a[MASK]")]))
        assert status == "StatusCode.NOT_FOUND" and "no model named 'nope'" in message
        status, message = await status_of(client.infer("mlm", [text("no mask")]))
        assert status == "StatusCode.INVALID_ARGUMENT" and "text[0]: input has no [MASK]" in message
        # The request's timeout parameter, then the client's gRPC deadline: either is the call's deadline. The
        # first item is in the (held) forward when its deadline passes; the second, still queued, is dropped.
        status, message = await status_of(client.infer("mlm", [text("a[MASK]")], timeout=300_000))
        assert status == "StatusCode.DEADLINE_EXCEEDED" and "timed out" in message
        status, _ = await status_of(client.infer("mlm", [text("b[MASK]")], client_timeout=0.3))
        assert status == "StatusCode.DEADLINE_EXCEEDED"
        gate.open.set()
        result = await client.infer("mlm", [text("Hello [MASK]orld")], request_id="id-1")
        assert result.get_response().id == "id-1" and result.as_numpy("mask_positions").tolist() == [[7]]
        metrics = (await http.get("/metrics")).text
        assert read_metric(metrics, "perceiver_requests_total", route=INFER, model="mlm", status="200") == 1
        assert read_metric(metrics, "perceiver_requests_total", route=INFER, model="", status="404") == 1
        assert read_metric(metrics, "perceiver_requests_total", route=INFER, model="mlm", status="504") >= 1
        dropped = sum(
            read_metric(metrics, "perceiver_requests_dropped_total", model="mlm", reason=reason)
            for reason in ("expired", "disconnected")
        )
        assert dropped == 1 and gate.forwards == 2  # the held batch, then "Hello": "b" never reached the model
        assert read_metric(metrics, "perceiver_inflight_requests") == 0
        stats = await client.get_inference_statistics("mlm", as_json=True)
        assert int(stats["model_stats"][0]["inference_count"]) == 2  # items that ran, "a" (answered too late) too


async def test_message_size_caps_and_unimplemented_methods(make_settings: Callable[..., Settings]) -> None:
    async with serving(grpc_settings(make_settings, max_body_mb=0.01)) as (_, client, _http):
        status, _ = await status_of(client.infer("mlm", [text("[MASK]" + "x" * 20_000)]))
        assert status == "StatusCode.RESOURCE_EXHAUSTED"
        status, _ = await status_of(client.get_system_shared_memory_status())
        assert status == "StatusCode.UNIMPLEMENTED"


async def test_draining_refuses_calls_and_health_follows(make_settings: Callable[..., Settings]) -> None:
    settings = grpc_settings(make_settings)
    async with serving(settings) as (app, client, _http):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.server.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def check(service: str) -> int:
                return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status

            serving_now = health_pb2.HealthCheckResponse.SERVING
            for service in ("", "inference.GRPCInferenceService", "liveness"):
                assert await check(service) == serving_now
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await check("no.such.Service")
            assert info.value.code() is grpc.StatusCode.NOT_FOUND
            app.state.lifecycle.begin_drain()
            assert await check("") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await check("liveness") == serving_now  # draining is not dying
        assert not await client.is_server_ready()
        status, message = await status_of(client.infer("mlm", [text("a[MASK]")]))
        assert status == "StatusCode.UNAVAILABLE" and "shutting down" in message


async def test_a_port_in_use_stops_the_start(make_settings: Callable[..., Settings]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = make_settings(server={"grpc_port": taken.getsockname()[1]})
        with pytest.raises(RuntimeError, match="cannot listen"):
            async with open_client(build_app(settings)):
                pass
    with pytest.raises(Exception, match="grpc_port"):
        make_settings(server={"grpc_port": 8000, "port": 8000})


async def test_every_call_writes_one_access_line(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="server")  # whatever level an earlier test configured
    async with serving(grpc_settings(make_settings, api_keys=[KEY])) as (_, client, _http):
        headers = {"x-api-key": KEY, "x-request-id": "grpc-req-7"}
        await client.infer("mlm", [text("Hello [MASK]orld", "[MASK]")], headers=headers)
        await status_of(client.infer("mlm", [text("no mask")], headers={"x-api-key": KEY}))
        await status_of(client.infer("mlm", [text("a[MASK]")]))  # no key
        assert await client.is_server_live()
    lines = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    got = [(r.method, r.route, r.status, r.model, r.levelno) for r in lines]  # type: ignore[attr-defined]
    assert got == [
        ("GRPC", INFER, 200, "mlm", logging.INFO),
        ("GRPC", INFER, 422, "mlm", logging.INFO),
        ("GRPC", INFER, 401, "", logging.INFO),
        ("GRPC", "/inference.GRPCInferenceService/ServerLive", 200, "", logging.DEBUG),  # a probe
    ]
    served = lines[0]
    assert served.request_id == "grpc-req-7" and served.items == 2 and served.batch_size >= 1  # type: ignore[attr-defined]
    assert served.bytes_in > 0 and served.bytes_out > 0 and served.client  # type: ignore[attr-defined]
    assert len({r.request_id for r in lines}) == 4  # type: ignore[attr-defined]
    # The 422 is logged at debug with its code and message; the key is never logged.
    (refused,) = [r for r in caplog.records if r.name == "server.http.access" and r.status == 422]  # type: ignore[attr-defined]
    assert refused.error_code == "invalid_input" and "no [MASK]" in refused.getMessage()  # type: ignore[attr-defined]
    assert all(KEY not in r.getMessage() and KEY not in str(r.__dict__) for r in caplog.records)
