"""A real server process for the ecosystem's clients: HTTP and gRPC, API keys on, the repository's unload enabled."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from tritonclient._plugin import InferenceServerClientPlugin

from tests.server.conftest import free_port

KEY = "k3y-Triton-0123456789abcdef"


@dataclass(frozen=True)
class Live:
    http: str  # host:port, as tritonclient takes it
    grpc: str
    key: str

    @property
    def base(self) -> str:
        return f"http://{self.http}"


class Bearer(InferenceServerClientPlugin):
    """tritonclient's way to add a header to every call (HTTP headers, gRPC metadata)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, request) -> None:  # type: ignore[no-untyped-def]
        request.headers["authorization"] = f"Bearer {self.key}"


@pytest.fixture(scope="module")
def live(spawn_server: Callable[..., str], models_for, toml_writer, tmp_path_factory) -> Live:
    """`python -m server` with --grpc-port, models mlm and conv preloaded (sentiment loads on use)."""
    config = toml_writer(
        tmp_path_factory.mktemp("config") / "serve.toml",
        {"server": {"device": "cpu", "api_keys": [KEY], "admin_api": True, "max_body_mb": 4}, "models": models_for()},
    )
    grpc_port = free_port()
    base = spawn_server(
        "--config", str(config), "--grpc-port", str(grpc_port), "--preload", "mlm", "conv", "--log-level", "warning"
    )
    return Live(base.removeprefix("http://"), f"127.0.0.1:{grpc_port}", KEY)


def png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
