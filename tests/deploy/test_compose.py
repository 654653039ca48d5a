"""docker-compose.yml against the compose-spec schema, plus the monitoring wiring it sets up."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import (
    DOCKER,
    compose,
    duration_s,
    exported_metrics,
    image_env,
    perceiver_metrics_in,
)

SERVER_SERVICES = ("perceiver", "perceiver-cpu", "perceiver-replicas")


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    # The compose-spec schema vendored in check-jsonschema: no network.
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_matches_the_compose_spec() -> None:
    proc = _check_jsonschema(DOCKER / "docker-compose.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["x-perceiver"]["healthcheck"].update(start_perod="10m"),
        lambda c: c["services"]["perceiver"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities"),
        lambda c: c["services"]["grafana"].update(port=["3000:3000"]),
    ],
    ids=["typo-in-shared-anchor", "device-without-capabilities", "unknown-service-key"],
)
def test_schema_check_catches_mistakes(tmp_path: Path, mutate) -> None:
    # The services share the anchored block's objects, so a mistake there reaches both of them.
    data = compose()
    mutate(data)
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(data))
    assert _check_jsonschema(path).returncode != 0


def test_gpu_service_reserves_nvidia_gpus() -> None:
    services = compose()["services"]
    (device,) = services["perceiver"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device.get("count", "all") == "all" or int(device["count"]) >= 1
    assert "deploy" not in services["perceiver-cpu"], "the CPU variant must run without a GPU"
    assert services["perceiver"]["profiles"] == ["gpu"] and services["perceiver-cpu"]["profiles"] == ["cpu"]
    assert "TORCH_INDEX_URL" in services["perceiver-cpu"]["build"]["args"]


@pytest.mark.parametrize("name", SERVER_SERVICES)
def test_server_service(name: str) -> None:
    data = compose()
    service = data["services"][name]
    build = service["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    check = service["healthcheck"]
    assert check["test"][0] == "CMD" and "/health/" in " ".join(check["test"])
    assert duration_s(check["start_period"]) >= 300, "start period must cover a first model download + load"
    assert duration_s(service["stop_grace_period"]) >= 35  # request_timeout_s (30) + 5: the server's drain
    cache_parent = "/" + image_env()["HF_HOME"].strip("/").split("/")[0]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert volumes[cache_parent] in data["volumes"], "the model cache must be a named volume"
    assert "perceiver" in service["networks"]["default"]["aliases"]
    assert service["environment"]["HF_HUB_OFFLINE"].startswith("${HF_HUB_OFFLINE")


def test_prometheus_scrapes_the_server() -> None:
    data = compose()
    prom = data["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    config_path = DOCKER / mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "perceiver-serve"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    for name in SERVER_SERVICES:
        service = data["services"][name]
        assert host in service["networks"]["default"]["aliases"]
        assert service["command"][service["command"].index("--port") + 1] == port


def _dashboard() -> dict:
    return json.loads((DOCKER / "grafana" / "dashboards" / "perceiver-serve.json").read_text())


def test_grafana_is_provisioned() -> None:
    data = compose()
    grafana = data["services"]["grafana"]
    mounts = {v.split(":")[1]: DOCKER / v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    dashboards_dir = mounts[provider["options"]["path"]]
    assert (dashboards_dir / "perceiver-serve.json").is_file()
    dashboard = _dashboard()
    # No datasource uid is written into the dashboard: every panel and query uses the $datasource variable, which
    # Grafana fills with the provisioned (default) Prometheus here, and with whatever the operator picks elsewhere.
    (choice,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert choice["type"] == "datasource" and choice["query"] == datasource["type"] and datasource["isDefault"]
    for panel in dashboard["panels"]:
        for where in (panel, *panel["targets"]):
            assert where["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    assert '"uid": "prometheus"' not in (DOCKER / "grafana" / "dashboards" / "perceiver-serve.json").read_text()


def test_dashboard_filters_by_namespace_pod_model_and_route() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert {"datasource", "namespace", "pod", "model", "route"} <= set(variables)
    for name in ("namespace", "pod", "model", "route"):
        # "All" must also match series without the label (compose has no namespace or pod labels).
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
        assert perceiver_metrics_in(variables[name]["definition"]), name
    for panel in _dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name in ("namespace", "pod"):
                assert f'{name}=~"${name}"' in expr, (panel["title"], expr)
            if "route" in expr or "perceiver_requests_total" in expr or "request_duration" in expr:
                assert 'route=~"$route"' in expr and 'model=~"$model"' in expr, (panel["title"], expr)


def test_dashboard_queries_use_exported_metrics() -> None:
    exported = exported_metrics()
    used: set[str] = set()
    for panel in _dashboard()["panels"]:
        for target in panel["targets"]:
            names = perceiver_metrics_in(target["expr"])
            assert names, f"{panel['title']}: no perceiver metric in {target['expr']}"
            missing = names - set(exported)
            assert not missing, f"{panel['title']}: the server exports no {sorted(missing)}"
            used |= names
    # What people came to look at: request rate by status, latency percentiles, queue wait, batch size, in-flight,
    # load time, device memory, and the 429 and 504 rates.
    assert {
        "perceiver_requests_total",
        "perceiver_request_duration_seconds_bucket",
        "perceiver_queue_wait_seconds_bucket",
        "perceiver_queue_depth",
        "perceiver_batch_size_sum",
        "perceiver_device_memory_used_bytes",
        "perceiver_device_memory_capacity_bytes",
        "perceiver_inflight_requests",
        "perceiver_model_load_seconds_sum",
    } <= used
    exprs = " ".join(t["expr"] for p in _dashboard()["panels"] for t in p["targets"])
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(perceiver_request_duration_seconds_bucket" in exprs
    assert 'status="429"' in exprs and 'status="504"' in exprs and "sum by (status)" in exprs


# ------------------------------------------------------------------ safe defaults

LOOPBACK_BIND = "${BIND_ADDRESS:-127.0.0.1}:"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY", re.IGNORECASE)


def test_ports_are_published_on_loopback_unless_asked() -> None:
    published = [(name, port) for name, s in compose()["services"].items() for port in s.get("ports", [])]
    shared = compose()["x-perceiver"]["ports"]
    assert published and shared
    for name, port in published:
        assert isinstance(port, str) and port.startswith(LOOPBACK_BIND), f"{name}: {port}"
        host_port, container_port = port[len(LOOPBACK_BIND) :].split(":")
        if "-" in host_port:  # one host port per replica
            first, last = map(int, host_port.split("-"))
            assert last - first + 1 == compose()["services"][name]["deploy"]["replicas"], f"{name}: {port}"
        else:
            assert host_port == container_port, f"{name}: {port}"


def test_no_secret_has_a_default() -> None:
    """A password is required from the environment (compose stops with the message), never defaulted."""
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and value:
                # `${VAR:?message}` (required) or `${VAR:-}` (empty when unset), nothing else.
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]+|:-)\}", str(value)), f"{name}: {key}={value}"
    grafana = compose()["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?.+\}", grafana), grafana


def test_required_versions_are_stated_alike() -> None:
    """The compose file's header and docs/deploy.md name the same Compose and Engine versions."""
    header = (DOCKER / "docker-compose.yml").read_text().split("\nname:")[0]
    deploy_doc = (DOCKER.parent / "docs" / "deploy.md").read_text()
    compose_version = re.search(r"Docker Compose v(\d+\.\d+\.\d+)", header)
    engine_version = re.search(r"Docker Engine (\d+\.\d+)", header)
    assert compose_version and engine_version, "state the versions the file needs in its header"
    assert f"Compose v{compose_version[1]}" in deploy_doc and f"Engine {engine_version[1]}" in deploy_doc
    # start_interval (used in the healthcheck) needs Engine 25.0 and Compose 2.20.2.
    assert "start_interval" in compose()["x-perceiver"]["healthcheck"]
    assert tuple(map(int, compose_version[1].split("."))) >= (2, 20, 2)
    assert float(engine_version[1]) >= 25.0


def test_replicas_share_their_jobs_through_a_redis_without_persistence() -> None:
    services = compose()["services"]
    replicas, redis = services["perceiver-replicas"], services["redis"]
    assert replicas["profiles"] == redis["profiles"] == ["replicas"]
    assert replicas["deploy"]["replicas"] >= 2
    assert replicas["environment"]["PERCEIVER_SERVE_JOBS_URL"] == "redis://redis:6379/0"
    assert replicas["depends_on"]["redis"]["condition"] == "service_healthy"
    # The settings the replicas are given are valid settings.
    from server.settings import load_settings

    environ = {k: v for k, v in replicas["environment"].items() if k.startswith("PERCEIVER_SERVE_") and "$" not in v}
    settings = load_settings(None, environ=environ)
    assert settings.server.jobs_url is not None and settings.server.jobs_required
    command = redis["command"]
    assert command[command.index("--save") + 1] == "" and command[command.index("--appendonly") + 1] == "no"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"  # a job is never evicted
    assert "ports" not in redis  # only the replicas reach it
    # A single server keeps its jobs in process unless the operator points it at a Redis.
    for name in ("perceiver", "perceiver-cpu"):
        assert services[name]["environment"]["PERCEIVER_SERVE_JOBS_URL"] == "${PERCEIVER_SERVE_JOBS_URL:-}"
