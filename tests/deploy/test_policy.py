"""Our own rules for the manifests, image and compose file, checked against the real server where
they name something of it (CLI, flags, metric names, settings)."""

from __future__ import annotations

import importlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    CLI,
    CLI_TARGET,
    DOCKER,
    GPU_OVERLAYS,
    HPA_OVERLAYS,
    K8S,
    KSERVE,
    OVERLAYS,
    all_of,
    cli_help,
    compose,
    config_map_toml,
    container,
    dockerfile_instructions,
    duration_s,
    effective_command,
    env_of,
    exported_metrics,
    final_stage,
    healthcheck,
    image_env,
    image_exec,
    image_user,
    kserve_filled,
    long_options,
    mentions_option,
    one,
    option_values,
    perceiver_metrics_in,
    pod_spec,
    pyproject,
    rendered,
)

AUTOSCALING_METRIC = "perceiver_inflight_requests"
MIN_STARTUP_BUDGET_S = 600  # a first load of a checkpoint from a cold volume


def _seconds(probe: dict[str, Any]) -> int:
    """How long a probe can keep failing before it acts."""
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def _settings(overlay: str):
    """The ConfigMap's config as the real server loads it (it must be valid for server.settings)."""
    from server.settings import load_settings

    _, text = config_map_toml(rendered(overlay))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.toml"
        path.write_text(text)
        return load_settings(path, environ={})


# ------------------------------------------------------------------ the command line is the real CLI


def test_cli_is_the_project_console_script() -> None:
    assert pyproject()["project"]["scripts"][CLI] == CLI_TARGET
    module, _, attr = CLI_TARGET.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_image_runs_the_cli_under_tini() -> None:
    entrypoint, cmd = image_exec("ENTRYPOINT"), image_exec("CMD")
    assert entrypoint == ["/usr/bin/tini", "--"]
    assert cmd[0] == CLI
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"apt-get install [^\n]*\btini=", dockerfile), "ENTRYPOINT needs Debian's tini package"
    assert all(mentions_option(cli_help(), opt) for opt in long_options(cmd))
    # Host and port from the settings' environment, which the HEALTHCHECK reads too.
    assert not option_values(cmd, "--host") and not option_values(cmd, "--port")
    assert image_env()["PERCEIVER_SERVE_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_the_real_cli(overlay: str) -> None:
    docs = rendered(overlay)
    server = effective_command(container(docs))
    assert server[:3] == ["/usr/bin/tini", "--", CLI]
    argv = server[3:]
    unknown = [o for o in long_options(argv) if not mentions_option(cli_help(), o)]
    assert not unknown, f"options the real CLI does not have: {unknown}"
    assert option_values(argv, "--host") == ["0.0.0.0"]

    warm = effective_command(container(docs, "warm-cache"))
    assert warm[:4] == ["/usr/bin/tini", "--", CLI, "download"]
    unknown = [o for o in long_options(warm[4:]) if not mentions_option(cli_help("download"), o)]
    assert not unknown, f"options `download` does not have: {unknown}"


def test_compose_commands_use_the_real_cli() -> None:
    for name, service in compose()["services"].items():
        if "perceiver" not in name:
            continue
        argv = service["command"]
        assert argv[0] == CLI
        assert all(mentions_option(cli_help(), o) for o in long_options(argv)), name


# ------------------------------------------------------------------ probes and shutdown


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_three_probes(overlay: str) -> None:
    docs = rendered(overlay)
    server = container(docs)
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["http"] == int(option_values(server["args"], "--port")[0])
    probes = {k: server.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert all(probes.values()), f"missing probes: {[k for k, v in probes.items() if not v]}"
    for probe in probes.values():
        assert probe["httpGet"]["port"] in ("http", ports["http"])
    assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready"  # 503 while loading or draining
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live"
    # The startup probe gates the others until the preloaded models are in, for long enough.
    assert probes["startupProbe"]["httpGet"]["path"] == "/health/ready"
    assert _seconds(probes["startupProbe"]) >= MIN_STARTUP_BUDGET_S
    # Liveness restarts a wedged process, not a slow batch: >= 30 s of failures before it acts.
    assert _seconds(probes["livenessProbe"]) >= 30
    assert probes["readinessProbe"]["periodSeconds"] <= 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_and_drain(overlay: str) -> None:
    docs = rendered(overlay)
    spec, server = pod_spec(docs), container(docs)
    command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pre_stop = float(command[1])
    settings = _settings(overlay).server
    # After SIGTERM the server (server/cli.py) stays up drain_seconds, then uvicorn's graceful
    # shutdown waits for in-flight requests up to request_timeout_s + 5 s.
    shutdown = settings.drain_seconds + int(settings.request_timeout_s) + 5
    assert spec["terminationGracePeriodSeconds"] > pre_stop + shutdown


# ------------------------------------------------------------------ resources, security, wiring


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_limit_and_scheduling(overlay: str) -> None:
    docs = rendered(overlay)
    spec, resources = pod_spec(docs), container(docs)["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    if "nvidia.com/gpu" in resources.get("requests", {}):
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])


@pytest.mark.parametrize("overlay", ("base", "overlays/cpu"))
def test_cpu_variants_request_no_gpu(overlay: str) -> None:
    assert "nvidia.com/gpu" not in json.dumps(pod_spec(rendered(overlay)))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_requests_and_limits(overlay: str) -> None:
    spec = pod_spec(rendered(overlay))
    for c in spec["containers"] + spec.get("initContainers", []):
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests), c["name"]
        assert "memory" in limits, c["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_non_root(overlay: str) -> None:
    spec = pod_spec(rendered(overlay))
    uid = int(image_user().split(":")[0])
    assert uid != 0
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid and pod["fsGroup"]
    writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v or "persistentVolumeClaim" in v}
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], c["name"]
        if sc.get("readOnlyRootFilesystem"):
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts.get("/tmp") in writable, f"{c['name']}: read-only root needs a writable /tmp"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_cache_volume(overlay: str) -> None:
    docs = rendered(overlay)
    spec = pod_spec(docs)
    pvc = one(docs, "PersistentVolumeClaim")
    (cache,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert cache["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # every replica mounts the warmed cache
    hf_home = image_env()["HF_HOME"]
    for name in ("warm-cache", "server"):
        c = container(docs, name)
        assert env_of(c)["HF_HOME"] == hf_home
        assert any(
            hf_home.startswith(m["mountPath"] + "/") and m["name"] == cache["name"] for m in c["volumeMounts"]
        ), f"{name}: HF_HOME is not on the cache volume"
    # The init container downloads; the server never does (a missing file is a clear error).
    assert env_of(container(docs, "warm-cache"))["HF_HUB_OFFLINE"] == "0"
    assert env_of(container(docs, "server"))["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_preloads_are_valid_for_the_server(overlay: str) -> None:
    docs = rendered(overlay)
    settings = _settings(overlay)
    server_args = container(docs)["args"]
    preload = option_values(server_args, "--preload")
    assert preload and set(preload) <= set(settings.models)
    warm_args = container(docs, "warm-cache")["args"]
    # `download [--config PATH] NAME...`: the positional names.
    rest, warmed = warm_args[2:], []
    while rest:
        token, rest = rest[0], rest[1:]
        if token == "--config":
            rest = rest[1:]
        elif not token.startswith("--"):
            warmed.append(token)
    assert set(preload) <= set(warmed), "the init container must download every preloaded model"
    assert set(warmed) <= set(settings.models)
    assert option_values(warm_args, "--config")[0] == option_values(server_args, "--config")[0]
    for name in warmed:
        assert "/" in settings.models[name].source, f"{name}: source should be a hub id"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_references(overlay: str) -> None:
    docs = rendered(overlay)
    deployment, service, pdb = one(docs, "Deployment"), one(docs, "Service"), one(docs, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    container_ports = {p["name"] for p in container(docs)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for v in pod_spec(docs)["volumes"]:
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in names
    images = {c["image"] for c in pod_spec(docs)["containers"] + pod_spec(docs)["initContainers"]}
    assert len(images) == 1, "init container and server must run the same image"


# ------------------------------------------------------------------ autoscaling on a real metric


def test_autoscaling_metric_is_a_gauge_the_server_exports() -> None:
    assert exported_metrics().get(AUTOSCALING_METRIC) == "gauge"


@pytest.mark.parametrize("overlay", HPA_OVERLAYS)
def test_hpa_scales_on_the_exported_metric(overlay: str) -> None:
    docs = rendered(overlay)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one(docs, "Deployment")["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    assert name == AUTOSCALING_METRIC
    assert exported_metrics().get(name) == "gauge", f"{name} is not a gauge the server exports"


def test_prometheus_adapter_rule_exposes_the_hpa_metric() -> None:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    hpa_metrics = {
        one(rendered(o), "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
        for o in HPA_OVERLAYS
    }
    (rule,) = values["rules"]["custom"]
    assert {rule["name"]["as"]} == hpa_metrics
    assert re.fullmatch(rule["name"]["matches"], AUTOSCALING_METRIC)
    assert perceiver_metrics_in(rule["seriesQuery"]) == {AUTOSCALING_METRIC}
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "<<.Series>>" in rule["metricsQuery"] and "rate(" not in rule["metricsQuery"]  # a gauge


def test_keda_scaledobject_matches_the_hpa_it_replaces() -> None:
    docs = rendered("overlays/gpu-keda")
    assert not all_of(docs, "HorizontalPodAutoscaler"), "KEDA owns the HPA; ours must be removed"
    scaled = one(docs, "ScaledObject")["spec"]
    hpa = one(rendered("overlays/gpu"), "HorizontalPodAutoscaler")["spec"]
    assert scaled["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert perceiver_metrics_in(trigger["metadata"]["query"]) == {AUTOSCALING_METRIC}
    assert trigger["metadata"]["query"].startswith("sum(")  # a total, divided per pod by the HPA
    assert float(trigger["metadata"]["threshold"]) == float(hpa["metrics"][0]["pods"]["target"]["averageValue"])
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])


# ------------------------------------------------------------------ image


def test_image_healthcheck_cache_and_offline() -> None:
    from server.settings import ENV_PREFIX, ServerSettings

    options, argv = healthcheck()
    assert "/health/live" in " ".join(argv)
    assert argv[0] == "python"
    # It follows the configured port: the variable the server's `port` setting is read from.
    port_variable = ENV_PREFIX + "PORT"
    assert "port" in ServerSettings.model_fields
    assert f"os.environ.get('{port_variable}'" in argv[-1] and ":8000/" not in argv[-1]
    exposed = [rest.split() for ins, rest in dockerfile_instructions() if ins == "EXPOSE"]
    assert exposed == [[image_env()[port_variable], image_env()["PERCEIVER_SERVE_GRPC_PORT"]]]
    assert duration_s(options["start-period"]) >= 30
    env = image_env()
    assert "HF_HUB_OFFLINE" in env and env["HF_HOME"].startswith("/cache/")
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert 'VOLUME ["/cache"]' in dockerfile
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2, "multi-stage build"
    assert re.search(r"torch==\$\{TORCH_VERSION\}", dockerfile) and "ARG TORCH_VERSION=2.13.0" in dockerfile


def test_dockerignore_keeps_what_the_image_copies() -> None:
    lines = [
        ln.strip()
        for ln in (DOCKER.parent / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for named in line.split()[1:-1]:
                source = named.rstrip("/").rstrip("*")
                assert (source in included and (DOCKER.parent / source).exists()) or source == "README.md", source


# ------------------------------------------------------------------ gRPC


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grpc_port_is_served_and_exposed(overlay: str) -> None:
    docs = rendered(overlay)
    server = container(docs)
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["grpc"] == int(option_values(server["args"], "--grpc-port")[0]) != ports["http"]
    (grpc,) = [p for p in one(docs, "Service")["spec"]["ports"] if p["targetPort"] == "grpc"]
    assert grpc["appProtocol"] == "kubernetes.io/h2c"


def test_the_image_and_compose_serve_grpc_on_8001() -> None:
    assert image_env()["PERCEIVER_SERVE_GRPC_PORT"] == "8001"  # the CMD takes its ports from the environment
    exposed = {port for ins, rest in final_stage(dockerfile_instructions()) if ins == "EXPOSE" for port in rest.split()}
    assert {"8000", "8001"} <= exposed
    for name, service in compose()["services"].items():
        if "perceiver" in name:
            published = [port.rsplit(":", 2)[-1] for port in service["ports"]]  # container ports
            assert option_values(service["command"], "--grpc-port") == ["8001"] and "8001" in published


# ------------------------------------------------------------------ KServe


def _kserve() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = rendered(KSERVE)
    return one(docs, "ServingRuntime"), one(docs, "InferenceService")


def test_the_serving_runtime_runs_the_image_as_the_deployment_does() -> None:
    runtime, _ = _kserve()
    (server,) = runtime["spec"]["containers"]
    deployed = container(rendered("base"))
    assert server["image"] == deployed["image"]
    for key in ("allowPrivilegeEscalation", "readOnlyRootFilesystem", "runAsNonRoot", "capabilities"):
        assert server["securityContext"][key] == deployed["securityContext"][key], key
    assert server["securityContext"]["runAsUser"] == int(image_user().split(":")[0])
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    assert any(v["name"] == mounts["/tmp"] and "emptyDir" in v for v in runtime["spec"]["volumes"])
    argv = effective_command(server)
    assert argv[:3] == ["/usr/bin/tini", "--", CLI]
    assert all(mentions_option(cli_help(), o) for o in long_options(argv[3:]))
    ports = [(p["name"], p["containerPort"]) for p in server["ports"]]
    assert ports[0] == ("http", int(option_values(argv, "--port")[0]))  # KServe's HTTP endpoint: the first port
    assert ("grpc", int(option_values(argv, "--grpc-port")[0])) in ports  # "grpc": KServe marks it h2c
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    assert server["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": ports[0][1]}
    assert server["startupProbe"]["httpGet"] == server["readinessProbe"]["httpGet"]
    assert _seconds(server["startupProbe"]) >= MIN_STARTUP_BUDGET_S
    from server.v2.grpc.health import LIVENESS

    assert server["livenessProbe"]["grpc"] == {"port": ports[1][1], "service": LIVENESS}


def test_the_inference_service_uses_the_runtime_which_serves_its_model() -> None:
    from server.cli import serve_settings

    runtime, isvc = _kserve()
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    # Knative's serverless mode gives a container one port: both need the Standard (raw) mode.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    (server,) = runtime["spec"]["containers"]
    settings = serve_settings(kserve_filled(server["args"], isvc)[1:])
    name = isvc["metadata"]["name"]
    assert list(settings.models) == [name]  # that model only: no catalog
    served = settings.models[name]
    assert (served.task.value, served.source) == (isvc["metadata"]["annotations"]["perceiverTask"], "/mnt/models")
    assert settings.server.preload == [name] and settings.server.grpc_port == 8081
