"""What the deployments install and set so that a first run behaves as documented: PyAV wherever the server is
installed to serve (mp4 uploads), the OpenTelemetry extra in the image, and JSON logs in the container and pods."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.deploy.support import (
    OVERLAYS,
    REPO,
    compose,
    container,
    dockerfile_instructions,
    env_of,
    image_env,
    rendered,
)

LOG_FORMAT = "PERCEIVER_SERVE_LOG_FORMAT"


def _extras(requirement: str) -> set[str]:
    """The extras of a local requirement (`.`, `".[a,b]"`, `-e .[a]`)."""
    match = re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", requirement)
    assert match, requirement
    return {e.strip() for e in (match.group(1) or "").split(",") if e.strip()}


def test_the_image_installs_the_video_and_otel_extras() -> None:
    installs = [
        shlex.split(rest) for ins, rest in dockerfile_instructions() if ins == "RUN" and "-c requirements/" in rest
    ]
    assert len(installs) == 1, installs
    local = [arg for arg in installs[0] if arg.startswith(".")]
    assert len(local) == 1 and {"video", "otel"} <= _extras(local[0])


def test_scripts_serve_installs_pyav() -> None:
    """The README's serve command: mp4 uploads must work without the test extra having been installed first."""
    lines = [line.split() for line in (REPO / "scripts/serve").read_text().splitlines() if "scripts/bootstrap" in line]
    assert lines and all(line[:2] == ["scripts/bootstrap", "video"] for line in lines if not line[0].startswith("#"))


def test_image_and_compose_log_json() -> None:
    assert image_env()[LOG_FORMAT] == "json"
    services = compose()["services"]
    servers = [s for name, s in services.items() if name.startswith("perceiver")]
    assert servers and all(s["environment"][LOG_FORMAT] == "json" for s in servers)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_log_json(overlay: str) -> None:
    assert env_of(container(rendered(overlay)))[LOG_FORMAT] == "json"
