"""checkov (a scanner operators run on manifests) on every rendered overlay: no finding but the
accepted ones in checkov-accepted.yaml, each with its reason.

checkov runs from its own virtualenv (requirements/checkov.txt; scripts/bootstrap test makes it),
fully offline: no platform download (--skip-download, BC_SKIP_MAPPING), no version check
(CKV_SKIP_PACKAGE_UPDATE_CHECK), and under a socket guard that records and refuses any connection,
so a run that tries to reach the network fails here instead of hanging in CI.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import OVERLAYS, REPO, VENV_BIN, rendered

ACCEPTED = Path(__file__).resolve().parent / "checkov-accepted.yaml"
PINS = REPO / "requirements" / "checkov.txt"
NETWORK_ATTEMPT = "checkov tried to reach the network:"

# Run as `python -c GUARD ARGS...` in checkov's venv: any outbound connection (or name lookup) is
# printed and refused, then checkov runs as its console script does.
GUARD = f"""
import socket, sys

def _refuse(*args, **kwargs):
    print({NETWORK_ATTEMPT!r}, *(a for a in args if not isinstance(a, socket.socket)), file=sys.stderr, flush=True)
    raise OSError("network disabled for this run")

for name in ("connect", "connect_ex"):
    setattr(socket.socket, name, _refuse)
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
sys.argv[0] = "checkov"
from checkov.main import Checkov
sys.exit(Checkov().run())
"""


def _checkov_python() -> Path:
    python = Path(os.environ.get("CHECKOV_VENV", VENV_BIN.parent / "tools" / "checkov")) / "bin" / "python"
    assert python.exists(), f"{python} is missing: run scripts/bootstrap test (checkov's venv, {PINS.name})"
    return python


def _file_name(overlay: str) -> str:
    return overlay.replace("/", "-") + ".yaml"


def _run(directory: Path, *, offline: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "CKV_", "PRISMA_"))}
    env["LOG_LEVEL"] = "WARNING"
    flags = ["--skip-download"] if offline else []
    if offline:
        env.update(BC_SKIP_MAPPING="TRUE", CKV_SKIP_PACKAGE_UPDATE_CHECK="TRUE")
    argv = ["--directory", str(directory), "--framework", "kubernetes", *flags, "--output", "json"]
    return subprocess.run(
        [str(_checkov_python()), "-c", GUARD, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=directory,
    )


def run_checkov(directory: Path) -> tuple[dict[str, Any], str]:
    """checkov's JSON report on the YAML files of `directory` (offline), and its stderr."""
    proc = _run(directory, offline=True)
    assert NETWORK_ATTEMPT not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (0, 1), f"checkov exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    (kubernetes,) = [r for r in reports if r.get("check_type") == "kubernetes"]
    return kubernetes, proc.stderr


@functools.cache
def _scan() -> tuple[dict[str, Any], str]:
    with tempfile.TemporaryDirectory() as tmp:
        for overlay in OVERLAYS:
            (Path(tmp) / _file_name(overlay)).write_text(yaml.safe_dump_all(rendered(overlay), sort_keys=False))
        return run_checkov(Path(tmp))


def _findings(report: dict[str, Any]) -> set[tuple[str, str, str]]:
    by_file = {_file_name(o): o for o in OVERLAYS}
    return {
        (by_file[Path(f["file_path"]).name], f["check_id"], f["resource"]) for f in report["results"]["failed_checks"]
    }


def accepted() -> dict[tuple[str, str, str], str]:
    entries = yaml.safe_load(ACCEPTED.read_text())
    out = {}
    for entry in entries:
        assert set(entry) == {"check", "overlay", "resource", "reason"}, entry
        assert entry["overlay"] in OVERLAYS and len(entry["reason"].split()) >= 8, entry
        out[(entry["overlay"], entry["check"], entry["resource"])] = entry["reason"]
    return out


def test_checkov_version_is_the_pinned_one() -> None:
    proc = subprocess.run([str(_checkov_python()), "-m", "pip", "show", "checkov"], capture_output=True, text=True)
    (pinned,) = [line.split("==")[1] for line in PINS.read_text().splitlines() if line.startswith("checkov==")]
    assert f"Version: {pinned}\n" in proc.stdout, "checkov's venv is stale: run scripts/bootstrap test"


def test_overlays_have_no_findings_but_the_accepted_ones() -> None:
    report, _ = _scan()
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["resource_count"] >= 10 * len(OVERLAYS)
    found, allowed = _findings(report), set(accepted())
    new = sorted(found - allowed)
    assert not new, "new checkov findings: fix them, or accept them with a reason in checkov-accepted.yaml:\n" + (
        "\n".join(f"  {o}: {c} {r}" for o, c, r in new)
    )
    stale = sorted(allowed - found)
    assert not stale, f"accepted findings that checkov no longer reports (remove them): {stale}"


def test_every_overlay_passes_every_check() -> None:
    """What is accepted is the base's, which is not deployed on its own."""
    assert {overlay for overlay, _, _ in accepted()} <= {"base"}


def test_scan_catches_a_regression(tmp_path: Path) -> None:
    docs = rendered("overlays/gpu")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].pop("cpu")
    (tmp_path / _file_name("overlays/gpu")).write_text(yaml.safe_dump_all(docs))
    report, _ = run_checkov(tmp_path)
    checks = {c for _, c, _ in _findings(report)}
    assert {"CKV_K8S_38", "CKV_K8S_11"} <= checks


def test_the_guard_sees_a_run_that_goes_online(tmp_path: Path) -> None:
    """Without the offline flags checkov looks for updates and policy metadata: the guard must see it."""
    (tmp_path / "empty.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: y}\n")
    assert NETWORK_ATTEMPT in _run(tmp_path, offline=False).stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_was_scanned(overlay: str) -> None:
    report, _ = _scan()
    scanned = {
        (Path(c["file_path"]).name, c["resource"].split(".")[0])
        for c in report["results"]["passed_checks"] + report["results"]["failed_checks"]
    }
    # What checkov has checks for (a NetworkPolicy is looked at through the Pod it must select).
    for kind in ("Deployment", "Pod", "Service", "ServiceAccount", "ConfigMap"):
        assert (_file_name(overlay), kind) in scanned, kind
