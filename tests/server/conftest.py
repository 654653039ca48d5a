"""Fixtures for the server tests: tiny random checkpoints made here, settings over them, apps, live servers."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.servers import dump_toml
from model_core.presets import preset_config
from server.engine.loading import LoadedModel, load_model
from server.settings import ModelSpec, Settings, build_settings
from tests.server.redis_support import RedisServer, ensure_redis_server
from tests.server.support import with_forward

REPO = Path(__file__).resolve().parents[2]
CONFIGS: dict[str, dict[str, Any]] = {  # the tiny presets; the flow model's 48x64 tiles fit the 20-px tile overlap
    "mlm": preset_config("language-perceiver-tiny"),
    "sentiment": preset_config(
        "language-perceiver-classifier-tiny", id2label={"0": "negative", "1": "neutral", "2": "positive"}
    ),
    "conv": preset_config(
        "vision-perceiver-conv-tiny",
        id2label={"0": "tabby cat", "1": "golden retriever", "2": "espresso", "3": "volcano"},
    ),
    "flow": preset_config("optical-flow-perceiver-tiny"),
    "video": preset_config(
        "multimodal-perceiver-tiny",
        id2label={
            str(i): name
            for i, name in enumerate(["abseiling", "juggling balls", "playing drums", "surfing water", "zumba"])
        },
    ),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the hub: hub-id sources take the offline path (the server reads the variable live)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders written by model_core.save_pretrained: mlm, sentiment, conv, conv-b (another seed), flow, video."""
    import torch

    from model_core import from_config, save_pretrained

    root = tmp_path_factory.mktemp("checkpoints")
    folders = {}
    for name, config, seed in [*((n, c, 0) for n, c in CONFIGS.items()), ("conv-b", CONFIGS["conv"], 1)]:
        folders[name] = save_pretrained(from_config(config, device="cpu", dtype=torch.float32, seed=seed), root / name)
    return folders


def models_table(checkpoints: dict[str, Path], **batching: Any) -> dict[str, dict[str, Any]]:
    """[models.*] over the test checkpoints, plus a hub-id model that is never cached ("offline")."""
    limits = {"max_batch_size": 8, "max_delay_ms": 20, "max_queue": 64, **batching}
    return {
        "mlm": {"task": "fill-mask", "source": str(checkpoints["mlm"]), "default": True, **limits},
        "offline": {"task": "fill-mask", "source": "perceiver-serve-tests/never-cached-model", **limits},
        "sentiment": {"task": "text-classification", "source": str(checkpoints["sentiment"]), **limits},
        "conv": {
            "task": "image-classification",
            "source": str(checkpoints["conv"]),
            "default": True,
            "aliases": ["c"],
            **limits,
        },
        "conv-b": {
            "task": "image-classification",
            "source": str(checkpoints["conv-b"]),
            "random_weights": True,
            **limits,
        },
        "flow": {"task": "optical-flow", "source": str(checkpoints["flow"]), **limits},
        "video": {"task": "video-autoencoding", "source": str(checkpoints["video"]), **limits},
    }


@pytest.fixture
def make_settings(checkpoints: dict[str, Path]) -> Callable[..., Settings]:
    def make(server: dict[str, Any] | None = None, models: dict[str, Any] | None = None, **batching: Any) -> Settings:
        table = models_table(checkpoints, **batching) if models is None else models
        return build_settings({"server": {"device": "cpu", **(server or {})}, "models": table})

    return make


class Gate:
    """Holds every forward until opened; `entered` is set once a forward is waiting."""

    def __init__(self) -> None:
        self.open, self.entered = threading.Event(), threading.Event()
        self.forwards = 0

    def wrap(self, loaded: LoadedModel) -> LoadedModel:
        def gated(batch: Any, forward: Callable[[Any], Any]) -> Any:
            self.forwards += 1
            self.entered.set()
            assert self.open.wait(timeout=30), "test gate never opened"
            return forward(batch)

        return dataclasses.replace(loaded, runner=with_forward(loaded.runner, gated))

    def loader(self, spec: ModelSpec, settings: Settings) -> LoadedModel:
        return self.wrap(load_model(spec, settings))


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A Gate whose loader wraps the real one; opened at teardown so no worker thread stays blocked."""
    g = Gate()
    yield g
    g.open.set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, *, timeout_s: float = 60, exited: Callable[[], str | None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (why := exited()) is not None:
            raise RuntimeError(why)
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base} not ready after {timeout_s}s")


def write_config(path: Path, settings_table: dict[str, Any]) -> Path:
    """A TOML file for a {server: {...}, models: {name: {...}}} table (strings, numbers, bools, lists)."""
    path.write_text(dump_toml(settings_table))
    return path


@contextmanager
def serve_in_thread(app: Any, **options: Any) -> Iterator[str]:
    """A real uvicorn server on loopback, in a thread of this process (so tests can reach into the app);
    `options` are more uvicorn.Config arguments."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout_s=30)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclasses.dataclass
class ServerProcess:
    """`python -m server ARGS` on a loopback port, its output in `log`."""

    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    terminated: bool = False

    def exited(self) -> str | None:
        if self.proc.poll() is None:
            return None
        return f"server exited with {self.proc.returncode}:\n{self.log.read_text()}"

    def wait_ready(self, timeout_s: float = 60) -> str:
        wait_ready(self.base, timeout_s=timeout_s, exited=self.exited)
        return self.base

    def terminate(self) -> None:
        """SIGTERM, once (a second one would only skip the drain window)."""
        if self.proc.poll() is None and not self.terminated:
            self.proc.terminate()
            self.terminated = True

    def stop(self) -> None:
        self.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def start_server(root: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Start `python -m server ARGS` on a free loopback port (HF offline, an empty HF cache under `root`); it is
    not waited for: several start side by side."""
    port = free_port()
    environ = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf-home"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log = root / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", *args, "--port", str(port)],
            cwd=REPO,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(proc, f"http://127.0.0.1:{port}", log)


@pytest.fixture(scope="module")
def spawn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., str]]:
    """Start `python -m server ARGS` on a free loopback port (HF offline, empty HF cache); returns its URL.
    Every process started is terminated (then killed) when the module's tests are done."""
    servers: list[ServerProcess] = []
    root = tmp_path_factory.mktemp("servers")

    def spawn(*args: str, env: dict[str, str] | None = None, ready_timeout_s: float = 60) -> str:
        servers.append(start_server(root, *args, env=env))
        return servers[-1].wait_ready(ready_timeout_s)

    yield spawn
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Debian's redis-server on a free loopback port, persistence off (installed with apt when missing)."""
    server = RedisServer(ensure_redis_server(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of an empty Redis database (started again if a test stopped it)."""
    if not redis_server.ping():
        redis_server.restart()
    redis_server.flush()
    return redis_server.url


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.fixture
def read_metric() -> Callable[..., float]:
    return sample


@pytest.fixture(scope="session")
def models_for(checkpoints: dict[str, Path]) -> Callable[..., dict[str, dict[str, Any]]]:
    """models_table over the session's checkpoints (batching limits as keyword arguments)."""
    return lambda **batching: models_table(checkpoints, **batching)


@pytest.fixture(scope="session")
def toml_writer() -> Callable[[Path, dict[str, Any]], Path]:
    return write_config


@pytest.fixture(scope="session")
def thread_server() -> Callable[[Any], Any]:
    return serve_in_thread
