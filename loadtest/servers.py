"""Servers under test: built-in model sets (random weights), TOML configs, and `perceiver-serve` subprocesses.

`small`: small random models of every task (per-request overhead dominates; what batching buys).
`mid`: a mid-size masked LM (128 latents x 512 channels, 6 latent layers, 2048 positions): its forward, not the
per-request overhead, fills the CPU, and a peer padding to 2048 positions pays for it.
`real`: the DeepMind configurations of language-perceiver and vision-perceiver-conv, random weights.

`serve` runs perceiver-serve; `serve_naive` the naive FastAPI + transformers peer (loadtest.naive).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.bench_model import REAL_CONFIGS
from model_core.presets import preset_config

MID_TEXT = preset_config(
    "language-perceiver-small",
    num_latents=128,
    d_latents=512,
    num_self_attends_per_block=6,
    num_self_attention_heads=8,
    d_model=256,
    qk_channels=256,
    v_channels=512,
    max_position_embeddings=2048,
)
# name -> (task, config.json dict, folder under the checkpoints root)
MODEL_SETS: dict[str, dict[str, tuple[str, dict[str, Any], str]]] = {
    "small": {
        "small-fill-mask": ("fill-mask", preset_config("language-perceiver-small"), "small-fill-mask"),
        "small-classify-text": (
            "text-classification",
            preset_config("language-perceiver-classifier-small", id2label={"0": "negative", "1": "positive"}),
            "small-classify-text",
        ),
        "small-vision-conv": (
            "image-classification",
            preset_config("vision-perceiver-conv-tiny", id2label={str(i): f"class {i}" for i in range(10)}),
            "small-vision-conv",
        ),
        "small-optical-flow": ("optical-flow", preset_config("optical-flow-perceiver-tiny"), "small-optical-flow"),
        "small-multimodal": (
            "video-autoencoding",
            preset_config("multimodal-perceiver-tiny", id2label={str(i): f"action {i}" for i in range(5)}),
            "small-multimodal",
        ),
    },
    "mid": {"mid-fill-mask": ("fill-mask", MID_TEXT, "mid-fill-mask")},
    # Folder names as `python -m loadtest.bench_model --checkpoints DIR` writes them, so both share DIR.
    "real": {
        "language-perceiver": ("fill-mask", REAL_CONFIGS["fill-mask"], "fill-mask"),
        "vision-perceiver-conv": ("image-classification", REAL_CONFIGS["image-conv"], "image-conv"),
    },
}


def write_model_set(name: str, root: Path) -> dict[str, dict[str, Any]]:
    """Random checkpoints of set `name` under `root` (reused when present); its [models.*] tables."""
    from server.models.demo import create_checkpoint  # written atomically: concurrent runs may share `root`

    tables = {}
    for model, (task, config, folder_name) in MODEL_SETS[name].items():
        folder = root / folder_name
        if not (folder / "model.safetensors").exists():
            create_checkpoint(config, folder)
        tables[model] = {"task": task, "source": str(folder.resolve()), "random_weights": True}
    return tables


def read_config(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def with_batching(config: dict[str, Any], **limits: Any) -> dict[str, Any]:
    """`config` with the given batching limits (max_batch_size, max_delay_ms, max_queue) on every model."""
    limits = {k: v for k, v in limits.items() if v is not None}
    models = {name: {**table, **limits} for name, table in config.get("models", {}).items()}
    return {**config, "models": models}


def dump_toml(config: dict[str, Any]) -> str:
    """[server] and [models.NAME] tables of strings, numbers, booleans and lists of those."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["[server]", *(f"{k} = {value(v)}" for k, v in config.get("server", {}).items())]
    for name, table in config.get("models", {}).items():
        lines += ["", f'[models."{name}"]', *(f"{k} = {value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def served_models(config: dict[str, Any]) -> list[str]:
    """Each task's default model, as the server will choose it (what the routes hit without ?model=)."""
    from server.settings import Task, build_settings

    settings = build_settings(config)
    return [spec.name for task in Task if (spec := settings.default_model(task)) is not None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    grpc: str | None = None  # host:port of its gRPC endpoint, when it serves one

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the server process has used so far."""
        return process_cpu_s(self.pid)


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, in clock ticks


@contextmanager
def serve(
    config: dict[str, Any],
    *,
    workdir: Path,
    name: str,
    ready_timeout_s: float = 600,
    grpc: bool = False,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """Run `perceiver-serve` on a free loopback port with `config` (and gRPC on another with `grpc`; quiet:
    warnings only, unless `extra_args` say otherwise; `env`: more environment), preloading the task defaults. The
    process is stopped (SIGTERM, then SIGKILL) on exit, whatever happens."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.toml"
    path.write_text(dump_toml(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        "-m",
        "server",
        "--config",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra_args,
    ]
    preload = served_models(config)
    if preload:
        args += ["--preload", *preload]
    grpc_target = f"127.0.0.1:{free_port()}" if grpc else None
    if grpc_target:
        args += ["--grpc-port", grpc_target.rsplit(":", 1)[1]]
    environ = {
        **os.environ,
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with _process(args, environ, workdir / f"{name}.log", base, name, ready_timeout_s) as pid:
        yield Server(base, pid, grpc_target)


@contextmanager
def serve_naive(
    checkpoint: str, *, workdir: Path, name: str = "naive", ready_timeout_s: float = 600
) -> Iterator[Server]:
    """Run the naive FastAPI + transformers peer (loadtest.naive) on `checkpoint`, on a free loopback port, with
    torch's defaults (no thread or OpenMP settings of ours in its environment)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "loadtest.naive", "--checkpoint", checkpoint, "--port", str(port)]
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    environ.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with _process(args, environ, workdir / f"{name}.log", base, name, ready_timeout_s) as pid:
        yield Server(base, pid)


@contextmanager
def _process(
    args: list[str], environ: Mapping[str, str], log: Path, base: str, name: str, ready_timeout_s: float
) -> Iterator[int]:
    """`args` started with its output in `log`, waited for until `base` is ready; its pid. Stopped on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(environ))
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not _ready(base):
            if proc.poll() is not None:
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"server {name} exited with {proc.returncode}; log: {log}\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server {name} not ready after {ready_timeout_s:.0f}s; log: {log}")
            time.sleep(0.2)
        yield proc.pid
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
