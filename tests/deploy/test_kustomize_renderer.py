"""The offline kustomize renderer: its semantics, and agreement with real kustomize where present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.kustomize import UnsupportedFeature, config_map_hash, render
from tests.deploy.support import K8S, OVERLAYS, rendered


def _key(doc):
    return (doc["apiVersion"], doc["kind"], doc["metadata"]["name"])


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _kustomize_binary() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_matches_real_kustomize(overlay: str) -> None:
    binary = _kustomize_binary()
    if binary is None:
        pytest.skip("no kustomize or kubectl on PATH; the renderer's own tests below still run")
    proc = subprocess.run([*binary, str(K8S / overlay)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    theirs = sorted((d for d in yaml.safe_load_all(proc.stdout) if d), key=_key)
    assert sorted(rendered(overlay), key=_key) == theirs


def test_config_map_hash_matches_kustomize_vectors() -> None:
    # From kustomize api/hasher/hasher_test.go, plus `configMapGenerator: [{name: x, literals: [k=v]}]`
    # rendered by kustomize v5.5.0 as x-bdg947hgcc (the name does not enter the hash).
    assert config_map_hash({"metadata": {"name": ""}}) == "6ct58987ht"
    assert config_map_hash({"metadata": {"name": ""}, "data": {"one": ""}}) == "9g67k2htb6"
    assert config_map_hash({"metadata": {"name": "x"}, "data": {"k": "v"}}) == "bdg947hgcc"


BASE = {
    "kustomization.yaml": "resources: [deploy.yaml]\nconfigMapGenerator:\n- name: cfg\n  files: [app.toml]\n",
    "app.toml": "a = 1\n",
    "deploy.yaml": """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      containers:
      - name: app
        image: app:1
        args: [serve, --port, "80"]
        resources: {requests: {cpu: "1", memory: 1Gi}}
      - name: sidecar
        image: side:1
      imagePullSecrets: [{name: a}]
      volumes:
      - name: cfg
        configMap: {name: cfg}
""",
}


def test_strategic_merge_semantics(tmp_path: Path) -> None:
    _write(tmp_path / "base", BASE)
    _write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": "resources: [../base]\npatches:\n- path: p.yaml\n",
            "p.yaml": """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      tolerations: [{key: gpu, operator: Exists}]
      containers:
      - name: app
        args: [serve]
        resources: {requests: {memory: 2Gi, gpu: 1}, limits: {gpu: 1}}
      - name: extra
        image: extra:1
""",
        },
    )
    (deploy, cm) = sorted(render(tmp_path / "overlay"), key=lambda d: d["kind"])[::-1]
    containers = deploy["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app", "sidecar", "extra"]  # merged by name
    assert containers[0]["args"] == ["serve"]  # atomic list replaced
    assert containers[0]["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi", "gpu": 1},
        "limits": {"gpu": 1},
    }  # maps merged
    assert cm["metadata"]["name"] == "cfg-" + config_map_hash(cm)
    assert deploy["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]


def test_delete_patch_and_null(tmp_path: Path) -> None:
    _write(
        tmp_path / "base",
        {
            **BASE,
            "kustomization.yaml": "resources: [deploy.yaml, svc.yaml]\n",
            "svc.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {}\n",
        },
    )
    _write(
        tmp_path / "o",
        {
            "kustomization.yaml": "resources: [../base]\npatches:\n- path: del.yaml\n- patch: |-\n"
            "    apiVersion: apps/v1\n    kind: Deployment\n    metadata: {name: web}\n"
            "    spec: {template: {spec: {containers: [{name: app, resources: null}]}}}\n",
            "del.yaml": "$patch: delete\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n",
        },
    )
    (deploy,) = render(tmp_path / "o")
    assert "resources" not in deploy["spec"]["template"]["spec"]["containers"][0]


def test_generated_config_map_referenced_outside_volumes_raises(tmp_path: Path) -> None:
    deploy = BASE["deploy.yaml"].replace(
        "        image: app:1\n", "        image: app:1\n        envFrom: [{configMapRef: {name: cfg}}]\n"
    )
    _write(tmp_path, {**BASE, "deploy.yaml": deploy})
    with pytest.raises(UnsupportedFeature, match="envFrom"):
        render(tmp_path)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"kustomization.yaml": "resources: [deploy.yaml]\nnamePrefix: x-\n"}, "namePrefix"),
        (
            {
                "kustomization.yaml": (
                    "resources: [deploy.yaml]\npatches:\n- path: p.yaml\n  target: {kind: Deployment}\n"
                ),
                "p.yaml": "[]",
            },
            "target",
        ),
        (
            {
                "kustomization.yaml": "resources: [deploy.yaml]\npatches:\n- path: p.yaml\n",
                "p.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
                "spec: {template: {spec: {imagePullSecrets: [{name: b}]}}}\n",
            },
            "imagePullSecrets",
        ),
    ],
)
def test_unsupported_features_raise(tmp_path: Path, files: dict[str, str], message: str) -> None:
    _write(tmp_path, {"deploy.yaml": BASE["deploy.yaml"], **files})
    with pytest.raises(UnsupportedFeature, match=message):
        render(tmp_path)
