"""The gRPC server: grpcio's asyncio server in the app's process and event loop, on `[server] grpc_port`, started and
stopped by the app's lifespan, sharing the app's registry, batchers, limits, keys and metrics.

Limits: a request message is at most `max_body_mb` (RESOURCE_EXHAUSTED past it, before it is parsed), an answer at
most `max_response_mb` (answers are checked against it before the model runs), and at most `max_connections` calls
run at once (RESOURCE_EXHAUSTED past it). At shutdown, draining refuses new calls (UNAVAILABLE) and health turns
NOT_SERVING at the first SIGTERM; calls in flight get until the end of their deadline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2_grpc

from server.engine.lifecycle import Lifecycle
from server.engine.metrics import Metrics
from server.engine.serving import InferenceService
from server.http.auth import KeyCheck
from server.v2.grpc.calls import Front
from server.v2.grpc.health import Health
from server.v2.grpc.servicer import service_handler

log = logging.getLogger(__name__)
ENVELOPE_BYTES = 1 << 20  # an answer's message beyond its tensors: names, shapes, metadata


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: Health
    port: int

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, give those in flight up to `grace_s`, then cancel what is left."""
        await self.health.stop()
        await self.server.stop(grace_s)


async def start_grpc(
    *, service: InferenceService, lifecycle: Lifecycle, metrics: Metrics, keys: KeyCheck, version: str
) -> GrpcServer:
    """Serve on `[server] host`:`grpc_port`; a port that cannot be bound stops the start-up."""
    server_settings = service.settings.server
    limits = service.limits
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limits.max_body_bytes),
            ("grpc.max_send_message_length", limits.max_response_bytes + ENVELOPE_BYTES),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server sharing it
        ],
        maximum_concurrent_rpcs=limits.connections.max_connections,
    )
    front = Front(service=service, lifecycle=lifecycle, metrics=metrics, keys=keys, version=version)
    server.add_generic_rpc_handlers((service_handler(front),))
    health = Health(lifecycle=lifecycle, registry=service.registry, settings=service.settings)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    host = server_settings.host
    address = f"[{host}]:{server_settings.grpc_port}" if ":" in host else f"{host}:{server_settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC: cannot listen on {address} ({exc}); choose another grpc_port") from None
    await server.start()
    health.start()
    log.info("gRPC (inference.GRPCInferenceService, grpc.health.v1) on %s", address)
    return GrpcServer(server, health, port)
