"""Shared helpers for the deployment tests: rendered manifests, the Dockerfile, the real server."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.kustomize import render

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = REPO / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
VENV_BIN = Path(sys.executable).parent

# Kubernetes version the manifests are validated against (kubernetes-validate's bundled
# schemas). Raise it deliberately, together with the pinned kubernetes-validate.
K8S_VERSION = "1.32.0"
OVERLAYS = ("base", "overlays/gpu", "overlays/cpu", "overlays/gpu-keda")
KSERVE = "kserve"  # the ServingRuntime and an example InferenceService, for clusters that run KServe
GPU_OVERLAYS = ("overlays/gpu", "overlays/gpu-keda")
HPA_OVERLAYS = ("base", "overlays/gpu", "overlays/cpu")
SERVER_CONTAINER = "server"
CLI = "perceiver-serve"  # the console script the image and the manifests run
CLI_TARGET = "server.cli:main"


# ---------------------------------------------------------------- manifests


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / overlay))


def rendered(overlay: str) -> list[dict[str, Any]]:
    """The resources of k8s/OVERLAY as kustomize renders them (a fresh copy)."""
    return copy.deepcopy(list(_rendered(overlay)))


def all_of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = all_of(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def kserve_filled(args: list[str], isvc: dict[str, Any]) -> list[str]:
    """A ServingRuntime container's args as KServe fills them for `isvc` (its name, labels and annotations; the
    Go-template forms the runtime uses: {{.Name}}, {{.Labels.key}}, {{.Annotations.key}})."""
    meta = isvc["metadata"]
    values = {
        "Name": meta["name"],
        **{f"Labels.{k}": v for k, v in meta.get("labels", {}).items()},
        **{f"Annotations.{k}": v for k, v in meta.get("annotations", {}).items()},
    }

    def fill(match: re.Match[str]) -> str:
        assert match.group(1) in values, f"the InferenceService gives no {match.group(1)}"
        return values[match.group(1)]

    return [re.sub(r"\{\{\s*\.([A-Za-z0-9_.]+)\s*\}\}", fill, arg) for arg in args]


def container(docs: list[dict[str, Any]], name: str = SERVER_CONTAINER) -> dict[str, Any]:
    spec = pod_spec(docs)
    found = [c for c in spec.get("containers", []) + spec.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}"
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def option_values(argv: list[str], option: str) -> list[str]:
    """Values after `option` up to the next option (`--opt a b`), or of `--opt=a`."""
    values: list[str] = []
    for i, token in enumerate(argv):
        if token.startswith(option + "="):
            values.append(token.split("=", 1)[1])
        elif token == option:
            for value in argv[i + 1 :]:
                if value.startswith("--"):
                    break
                values.append(value)
    return values


def long_options(argv: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in argv if t.startswith("--")]


def config_map_toml(docs: list[dict[str, Any]]) -> tuple[str, str]:
    """(mounted path, text) of the server's TOML config from the ConfigMap it mounts."""
    spec, server = pod_spec(docs), container(docs)
    (path,) = option_values(server["args"], "--config")
    for mount in server["volumeMounts"]:
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
            cm = next(d for d in all_of(docs, "ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"])
            return path, cm["data"][key]
    raise AssertionError(f"--config {path} is not under any volume mount")


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: Path = DOCKER / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (ins, _) in enumerate(instructions) if ins == "FROM"]
    return instructions[starts[-1] :]


def image_exec(instruction: str) -> list[str]:
    """ENTRYPOINT or CMD of the final stage, which must be in exec (JSON) form."""
    values = [rest for ins, rest in final_stage(dockerfile_instructions()) if ins == instruction]
    assert values, f"no {instruction} in the final stage"
    argv = json.loads(values[-1])
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), f"{instruction} is not exec form"
    return argv


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, rest in final_stage(dockerfile_instructions()):
        if ins == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def image_user() -> str:
    users = [rest for ins, rest in final_stage(dockerfile_instructions()) if ins == "USER"]
    assert users, "the final stage sets no USER"
    return users[-1]


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """(options, exec argv) of the final stage's HEALTHCHECK."""
    (rest,) = [r for ins, r in final_stage(dockerfile_instructions()) if ins == "HEALTHCHECK"]
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", rest))
    argv = json.loads(rest[rest.index("CMD") + 3 :].strip())
    return options, argv


def effective_command(c: dict[str, Any]) -> list[str]:
    """What the container runs: command or the image ENTRYPOINT, then args or the image CMD."""
    entrypoint = c["command"] if "command" in c else image_exec("ENTRYPOINT")
    args = c["args"] if "args" in c else (image_exec("CMD") if "command" not in c else [])
    return entrypoint + args


def duration_s(text: str) -> float:
    """'10m', '1m30s', '60s', '500ms' -> seconds (compose / Docker durations)."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ---------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


# ---------------------------------------------------------------- the real server


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def cli_command() -> list[str]:
    """How the tests run `perceiver-serve`: this checkout's `server.cli:main` (where the console script points,
    test_cli_is_the_project_console_script), through this interpreter with the checkout first on the path, so a
    venv installed from another checkout cannot answer for this one."""
    return [sys.executable, "-m", "server"]


def checkout_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with this checkout first on the import path (the tests' CLI runs outside its folder)."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])}


@functools.cache
def cli_help(*subcommand: str) -> str:
    """`perceiver-serve [SUBCOMMAND] --help`, run as the image would run it."""
    proc = subprocess.run(
        [*cli_command(), *subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=checkout_env(dict(os.environ)),
    )
    assert proc.returncode == 0, f"perceiver-serve {' '.join(subcommand)} --help failed:\n{proc.stderr[-2000:]}"
    return proc.stdout


def mentions_option(help_text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


@functools.cache
def exported_metrics() -> dict[str, str]:
    """Sample name -> metric type, for every series the real server's GET /metrics can produce.

    Built from the real app (server.app.build_app) scraped in process: the names come from the
    server's own registry, not from a list kept here.
    """
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from server.app import build_app
    from server.settings import build_settings

    response = TestClient(build_app(build_settings({}))).get("/metrics")
    assert response.status_code == 200, response.text
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    samples: dict[str, str] = {}
    for family in text_string_to_metric_families(response.text):
        for suffix in suffixes.get(family.type, ("",)):
            samples[family.name + suffix] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, family.type)
    return samples


PROM_IDENT = re.compile(r"\bperceiver_[a-z0-9_]+\b")


def perceiver_metrics_in(promql: str) -> set[str]:
    return set(PROM_IDENT.findall(promql))


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
        try:
            if http_get(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")
