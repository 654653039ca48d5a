"""The containers' command lines, run outside a container: they start the real server, which
answers its probes and exits on SIGTERM within the time the orchestrator gives it.

Only what cannot run here is changed: the console script is this venv's, --host/--port point
at a free loopback port, paths (config, caches) go to a temporary folder, and the hub is
offline. tini (the image's ENTRYPOINT) is used too where the host has it at the same path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.deploy.support import (
    CLI,
    KSERVE,
    checkout_env,
    cli_command,
    config_map_toml,
    container,
    effective_command,
    env_of,
    free_port,
    healthcheck,
    http_get,
    image_env,
    image_exec,
    kserve_filled,
    one,
    pod_spec,
    rendered,
    wait_until_up,
)

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 120
OK_EXIT = {0, -signal.SIGTERM, 128 + signal.SIGTERM}  # uvicorn may re-raise SIGTERM after its shutdown


def _set_option(argv: list[str], option: str, value: str) -> list[str]:
    argv = list(argv)
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    return argv


def _local_argv(argv: list[str], port: int) -> list[str]:
    """`[tini --] perceiver-serve ...` with this checkout's CLI and loopback ports (gRPC's too, when it has one)."""
    start = argv.index(CLI)
    prefix = argv[:start] if argv[:start] and Path(argv[0]).exists() else []
    local = _set_option(
        _set_option([*prefix, *cli_command(), *argv[start + 1 :]], "--host", "127.0.0.1"), "--port", str(port)
    )
    return _set_option(local, "--grpc-port", str(free_port())) if "--grpc-port" in local else local


def _base_env(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERCEIVER_SERVE_", "HF_"))}
    env.update({k: v for k, v in extra.items() if k != "PATH"})
    env.update(HF_HOME=str(tmp_path / "hf"), HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    (tmp_path / "home").mkdir(exist_ok=True)
    return checkout_env(env)


@contextmanager
def _running(argv: list[str], env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen]:
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def _terminate(proc: subprocess.Popen, budget_s: float, tmp_path: Path) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        log = (tmp_path / "server.log").read_text()
        raise AssertionError(f"still running {budget_s} s after SIGTERM:\n{log}") from None
    assert code in OK_EXIT, f"exit code {code}:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
    return time.monotonic() - started


def _shutdown_budget_s(overlay: str = "overlays/gpu") -> float:
    """What Kubernetes allows after SIGTERM: the grace period minus the preStop sleep before it."""
    docs = rendered(overlay)
    pre_stop = float(container(docs)["lifecycle"]["preStop"]["exec"]["command"][1])
    return pod_spec(docs)["terminationGracePeriodSeconds"] - pre_stop


def test_image_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    command = image_exec("ENTRYPOINT") + image_exec("CMD")
    start = command.index(CLI)
    prefix = command[:start] if Path(command[0]).exists() else []
    argv = [*prefix, *cli_command(), *command[start + 1 :]]
    argv += ["--demo", "--demo-dir", str(tmp_path / "demo")]  # random-weight models: no downloads
    # The port as an operator changes it: the image's variable, which the HEALTHCHECK reads too.
    ports = {"PERCEIVER_SERVE_PORT": str(port), "PERCEIVER_SERVE_GRPC_PORT": str(free_port())}
    env = _base_env(tmp_path, {**image_env(), "PERCEIVER_SERVE_HOST": "127.0.0.1", **ports})
    with _running(argv, env, tmp_path) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/health/live", proc, STARTUP_TIMEOUT_S)

        # The image's HEALTHCHECK command, as Docker would run it: in the container's environment.
        _, check = healthcheck()
        check = [sys.executable if a == "python" else a for a in check]
        assert subprocess.run(check, env=env, timeout=30).returncode == 0
        moved = {**env, "PERCEIVER_SERVE_PORT": str(free_port())}
        assert subprocess.run(check, env=moved, timeout=30, capture_output=True).returncode != 0

        status, body = http_get(base + "/metrics")
        assert status == 200 and "perceiver_inflight_requests" in body
        deadline = time.monotonic() + 60
        while http_get(base + "/health/ready")[0] != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.2)

        _terminate(proc, _shutdown_budget_s(), tmp_path)


def test_kubernetes_server_command_serves_the_configmap_config(tmp_path: Path) -> None:
    docs = rendered("overlays/gpu")
    server = container(docs)
    config_path, text = config_map_toml(docs)
    local_config = tmp_path / "config.toml"
    local_config.write_text(text)
    port = free_port()
    argv = _local_argv(effective_command(server), port)
    argv[argv.index(config_path)] = str(local_config)
    env = _base_env(tmp_path, {k: v for k, v in env_of(server).items() if v is not None})
    assert env_of(server)["HF_HUB_OFFLINE"] == "1"  # as in the pod: serve from the cache only
    # The API-key Secret's file, as the pod mounts it (one key per line).
    keys = tmp_path / "api-keys"
    keys.write_text("# keys of the perceiver-serve-api-keys Secret\n" + "k" * 32 + "\n")
    env["PERCEIVER_SERVE_API_KEYS_FILE"] = str(keys)
    with _running(argv, env, tmp_path) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/health/live", proc, STARTUP_TIMEOUT_S)
        status, body = http_get(base + "/v1/models")
        assert status == 401  # the keys file is read: everything but the probes needs a key
        request = urllib.request.Request(base + "/v1/models", headers={"Authorization": "Bearer " + "k" * 32})
        with urllib.request.urlopen(request, timeout=10) as r:
            status, body = r.status, r.read().decode()
        served = {m["name"] for m in json.loads(body)["models"]}
        assert set(tomllib.loads(text)["models"]) <= served
        _terminate(proc, _shutdown_budget_s(), tmp_path)


def test_init_container_command_resolves_its_models(tmp_path: Path) -> None:
    docs = rendered("overlays/gpu")
    warm = container(docs, "warm-cache")
    config_path, text = config_map_toml(docs)
    (tmp_path / "config.toml").write_text(text)
    argv = effective_command(warm)
    argv = [*cli_command(), *argv[argv.index(CLI) + 1 :]]
    argv[argv.index(config_path)] = str(tmp_path / "config.toml")
    # No hub here: offline, `download` must fail fast per model (exit 1), not reject its arguments (2).
    proc = subprocess.run(argv, env=_base_env(tmp_path, {}), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    names = argv[argv.index(str(tmp_path / "config.toml")) + 1 :]
    assert names and all(f"FAILED {name}:" in proc.stderr for name in names), proc.stderr


def test_kserve_runtime_command_serves_its_inference_services_model(tmp_path: Path) -> None:
    """The ServingRuntime's command, filled in for the example InferenceService as KServe fills it, with a small
    checkpoint where the storage initializer would have put the model: it preloads that model under the
    InferenceService's name, answers over HTTP and gRPC health, and stops on SIGTERM."""
    import grpc
    import torch
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from model_core import from_config, save_pretrained
    from model_core.presets import preset_config

    docs = rendered(KSERVE)
    runtime, isvc = one(docs, "ServingRuntime"), one(docs, "InferenceService")
    (server,) = runtime["spec"]["containers"]
    model = tmp_path / "mnt-models"
    save_pretrained(from_config(preset_config("language-perceiver-tiny"), device="cpu", dtype=torch.float32), model)
    port = free_port()
    argv = _local_argv(effective_command({**server, "args": kserve_filled(server["args"], isvc)}), port)
    argv[argv.index("/mnt/models")] = str(model)
    grpc_port = int(argv[argv.index("--grpc-port") + 1])
    env = _base_env(tmp_path, {e["name"]: e["value"] for e in server["env"] if "value" in e})
    with _running(argv, env, tmp_path) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/health/ready", proc, STARTUP_TIMEOUT_S)  # after the preload
        status, body = http_get(f"{base}/v2/models/{isvc['metadata']['name']}/ready")
        assert status == 200 and json.loads(body)["ready"] is True
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            service = server["livenessProbe"]["grpc"]["service"]  # what the kubelet's gRPC probe asks
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        _terminate(proc, _shutdown_budget_s(), tmp_path)
