"""The metrics exposition: standard collectors, series that exist before their first event, latency buckets that
reach the longest deadline, probes kept out of latency, device memory as used and capacity, and an exposition that
`promtool check metrics` (Debian's prometheus package) and the client library's parser accept."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.app import build_app
from server.engine.metrics import Metrics, latency_buckets
from server.settings import Settings, build_settings
from tests.debian import debian_binary
from tests.server.conftest import sample

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
TASK_ROUTES = {
    "mlm": "/fill-mask",
    "sentiment": "/classify-text",
    "conv": "/classify-image",
    "flow": "/optical-flow",
    "video": "/autoencode-video",
}


@pytest.fixture
def scraped(make_settings: Callable[..., Settings]) -> Callable[..., str]:
    def scrape(**server: object) -> str:
        with TestClient(build_app(make_settings(server=server))) as client:
            response = client.get("/metrics")
        assert response.status_code == 200
        return response.text

    return scrape


def test_process_and_python_collectors_are_registered(scraped: Callable[..., str]) -> None:
    text = scraped()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert f"\n{name} " in text, name
    assert "python_info{" in text and "python_gc_collections_total{" in text


def test_every_models_series_exist_before_their_first_event(scraped: Callable[..., str]) -> None:
    text = scraped()
    for model, route in TASK_ROUTES.items():
        labels = {"model": model, "route": route}
        assert f'perceiver_requests_total{{model="{model}",route="{route}",status="200"}} 0.0' in text
        assert sample(text, "perceiver_request_duration_seconds_count", **labels) == 0.0
        assert f'perceiver_request_duration_seconds_count{{model="{model}",route="{route}",status="200"}}' in text
        v2 = "/v2/models/{name}/infer"
        assert f'perceiver_requests_total{{model="{model}",route="{v2}",status="200"}} 0.0' in text
        for family in ("queue_wait_seconds_count", "inference_duration_seconds_count", "batch_size_count"):
            assert f'perceiver_{family}{{model="{model}"}} 0.0' in text, family
        assert f'perceiver_model_load_failures_total{{model="{model}"}} 0.0' in text
        assert f'perceiver_queue_depth{{model="{model}"}} 0.0' in text
        for reason in ("expired", "disconnected"):
            assert f'perceiver_requests_dropped_total{{model="{model}",reason="{reason}"}} 0.0' in text
    for status in ("done", "failed", "cancelled"):
        assert f'perceiver_jobs_finished_total{{kind="autoencode-video",status="{status}"}} 0.0' in text
    assert 'perceiver_jobs_queued{kind="autoencode-video"} 0.0' in text
    # A model is only counted on its own task's routes.
    assert 'model="mlm",route="/classify-image"' not in text


@pytest.mark.parametrize(("cap", "top"), [(30.0, 30.0), (45.0, 45.0), (900.0, 900.0), (3600.0, 3600.0)])
def test_latency_buckets_reach_the_longest_deadline(cap: float, top: float) -> None:
    settings = build_settings({"server": {"request_timeout_s": min(cap, 30.0), "max_request_timeout_s": cap}})
    buckets = latency_buckets(settings.server.request_timeout_cap_s)
    assert buckets[-1] == top and list(buckets) == sorted(set(buckets)) and buckets[0] == 0.001
    metrics = Metrics(settings)
    metrics.observe_request("/fill-mask", "m", 200, cap * 0.99)
    text = metrics.render().decode()
    finite = [
        s
        for f in text_string_to_metric_families(text)
        if f.name == "perceiver_request_duration_seconds"
        for s in f.samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf" and float(s.labels["le"]) >= cap * 0.99
    ]
    assert finite and all(s.value == 1.0 for s in finite)  # the slow answer is in a finite bucket


def test_probes_and_scrapes_stay_out_of_request_latency(make_settings: Callable[..., Settings]) -> None:
    with TestClient(build_app(make_settings())) as client:
        for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"):
            client.get(path)
        text = client.get("/metrics").text
    for route in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert f'perceiver_request_duration_seconds_count{{model="",route="{route}"' not in text, route
        assert sample(text, "perceiver_requests_total", route=route, status="200") >= 1.0, route


def test_device_memory_is_split_into_used_and_capacity(scraped: Callable[..., str]) -> None:
    text = scraped()
    rss = sample(text, "perceiver_device_memory_used_bytes", device="cpu", kind="rss")
    ram = sample(text, "perceiver_device_memory_capacity_bytes", device="cpu")
    assert 0 < rss < ram
    assert "perceiver_device_memory_bytes" not in text


def test_names_units_and_help_follow_the_conventions(scraped: Callable[..., str]) -> None:
    families = list(text_string_to_metric_families(scraped()))
    ours = [f for f in families if f.name.startswith("perceiver_")]
    assert len(ours) == 18  # the table in docs/server.md
    for family in ours:
        assert NAME.match(family.name) and family.documentation, family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples if not s.name.endswith("_created"))
        if "seconds" in family.name or "bytes" in family.name:
            assert family.type in ("histogram", "gauge", "counter"), family.name
    assert not any(s.name.endswith("_created") for f in ours for s in f.samples)  # no creation-time series


def test_promtool_accepts_the_exposition(scraped: Callable[..., str], make_settings: Callable[..., Settings]) -> None:
    promtool = debian_binary("promtool", "prometheus")
    with TestClient(build_app(make_settings())) as client:  # with traffic: every family has samples
        client.post("/fill-mask", json={"inputs": "a[MASK]"})
        client.post("/fill-mask", json={"inputs": 3})
        text = client.get("/metrics").text
    for exposition in (scraped(), text):
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60, check=False
        )
        assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


def test_promtool_would_catch_a_bad_name() -> None:
    promtool = debian_binary("promtool", "prometheus")
    bad = "# HELP perceiver_requests Requests\n# TYPE perceiver_requests counter\nperceiver_requests 1\n"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=bad, capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode != 0 and "_total" in checked.stdout + checked.stderr
