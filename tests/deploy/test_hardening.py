"""What an operator's scanner asks of the manifests, as our own rules (checkov runs in test_checkov.py):
a namespace, an identity without API access, ingress only to the serving ports, CPU limits the server is
sized to, the image by digest, API keys from a file, and no node drain that takes the last replica."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.support import (
    HPA_OVERLAYS,
    OVERLAYS,
    all_of,
    container,
    env_of,
    one,
    pod_spec,
    pyproject,
    rendered,
)

GRPC_PORT = 8001  # the gRPC endpoint's port, allowed by the NetworkPolicy ahead of time
DEPLOYED = tuple(o for o in OVERLAYS if o != "base")
CLUSTER_SCOPED = {"Namespace"}


def _containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = pod_spec(docs)
    return spec["containers"] + spec.get("initContainers", [])


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_namespace_for_everything(overlay: str) -> None:
    docs = rendered(overlay)
    namespace = one(docs, "Namespace")
    name = namespace["metadata"]["name"]
    assert name not in ("default", "kube-system")
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == name, f"{doc['kind']}/{doc['metadata']['name']}"
    # The pods meet the restricted Pod Security profile (test_policy.test_non_root), so it is enforced.
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_own_service_account_without_a_token(overlay: str) -> None:
    docs = rendered(overlay)
    spec = pod_spec(docs)
    account = one(docs, "ServiceAccount")
    assert spec["serviceAccountName"] == account["metadata"]["name"] != "default"
    assert spec["automountServiceAccountToken"] is False and account["automountServiceAccountToken"] is False
    assert not all_of(docs, "RoleBinding") and not all_of(docs, "ClusterRoleBinding")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_only_the_serving_ports(overlay: str) -> None:
    docs = rendered(overlay)
    policy = one(docs, "NetworkPolicy")["spec"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    server_ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    allowed_ports = set(server_ports) | set(server_ports.values()) | {GRPC_PORT}
    for rule in policy["ingress"]:
        assert rule.get("from"), "every rule names who may connect (no rule open to all)"
        for peer in rule["from"]:
            assert "ipBlock" not in peer and (peer.get("namespaceSelector") or peer.get("podSelector")) is not None
        assert rule.get("ports"), "every rule names its ports"
        assert {p["port"] for p in rule["ports"]} <= allowed_ports
    http_rules = [r for r in policy["ingress"] if {p["port"] for p in r["ports"]} & {"http", server_ports["http"]}]
    grpc_rules = [r for r in policy["ingress"] if GRPC_PORT in {p["port"] for p in r["ports"]}]
    assert http_rules and grpc_rules


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_may_scrape_what_the_service_monitor_names(overlay: str) -> None:
    docs = rendered(overlay)
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    (service_port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    target = service_port["targetPort"]
    scrapers = [
        peer
        for rule in one(docs, "NetworkPolicy")["spec"]["ingress"]
        if target in {p["port"] for p in rule["ports"]}
        for peer in rule["from"]
    ]
    assert any(
        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "monitoring"
        for peer in scrapers
    )
    # kube-prometheus-stack's default serviceMonitorSelector: `release: <its Helm release name>`.
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cpu_limits_and_the_threads_sized_to_them(overlay: str) -> None:
    docs = rendered(overlay)
    for c in _containers(docs):
        assert "cpu" in c["resources"]["limits"], c["name"]
    server = container(docs)
    requests, limits = server["resources"]["requests"], server["resources"]["limits"]
    assert _cpu(limits["cpu"]) == _cpu(requests["cpu"]), "the server gets the cores it asked for, no more"
    env = env_of(server)
    cores = int(_cpu(limits["cpu"]))
    assert int(env["PERCEIVER_SERVE_CPU_THREADS"]) == max(1, cores - 1), "a core for the event loop"
    (decodes,) = [e for e in server["env"] if e["name"] == "PERCEIVER_SERVE_MAX_CONCURRENT_DECODES"]
    assert decodes["valueFrom"]["resourceFieldRef"] == {"containerName": server["name"], "resource": "limits.cpu"}


def test_base_names_the_image_by_the_project_version() -> None:
    images = {c["image"] for c in _containers(rendered("base"))}
    assert images == {f"perceiver-serve:{pyproject()['project']['version']}"}


@pytest.mark.parametrize("overlay", DEPLOYED)
def test_overlays_pin_the_image_by_digest(overlay: str) -> None:
    images = {c["image"] for c in _containers(rendered(overlay))}
    (image,) = images
    assert re.fullmatch(r"[a-z0-9./-]*perceiver-serve@sha256:[0-9a-f]{64}", image), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_keys_come_from_a_mounted_secret_file(overlay: str) -> None:
    from server.settings import ENV_PREFIX, ServerSettings

    docs = rendered(overlay)
    spec, server = pod_spec(docs), container(docs)
    for c in _containers(docs):
        for e in c.get("env", []):
            assert "secretKeyRef" not in e.get("valueFrom", {}), f"{c['name']}: {e['name']} is a secret in the env"
        assert not any("secretRef" in e for e in c.get("envFrom", [])), c["name"]
    setting = "api_keys_file"
    assert setting in ServerSettings.model_fields
    path = env_of(server)[ENV_PREFIX + setting.upper()]
    (mount,) = [m for m in server["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert secret.get("optional", False) is False, "no Secret must not mean an open API"
    (item,) = [i for i in secret["items"] if i["path"] == path[len(mount["mountPath"].rstrip("/")) + 1 :]]
    assert item["key"] == "keys"
    # Readable by the server's user through its group (fsGroup), by nobody else.
    assert secret["defaultMode"] & 0o040 and not secret["defaultMode"] & 0o007
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]


@pytest.mark.parametrize("overlay", HPA_OVERLAYS)
def test_a_drain_never_evicts_the_only_replica(overlay: str) -> None:
    docs = rendered(overlay)
    hpa, pdb = one(docs, "HorizontalPodAutoscaler")["spec"], one(docs, "PodDisruptionBudget")["spec"]
    assert hpa["minReplicas"] >= 2
    assert pdb["maxUnavailable"] < hpa["minReplicas"]


def test_keda_keeps_two_replicas_too() -> None:
    docs = rendered("overlays/gpu-keda")
    scaled, pdb = one(docs, "ScaledObject")["spec"], one(docs, "PodDisruptionBudget")["spec"]
    assert scaled["minReplicaCount"] >= 2 and pdb["maxUnavailable"] < scaled["minReplicaCount"]
    assert scaled["fallback"]["replicas"] >= scaled["minReplicaCount"]
