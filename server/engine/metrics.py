"""Prometheus metrics on a per-app CollectorRegistry. The names are a contract (HPA rules, dashboards).

The protocol's statistics (server/v2/statistics.py) are read from these same series (`model_totals`), so the two
views of a model never disagree. HTTP and gRPC requests are counted alike (`observe_request`); a gRPC request's
route is its method path and its status the HTTP status of its outcome.

Besides the server's own: the standard process (`process_*`) and Python (`python_*`) collectors. The labelled
series of every configured model are created at start-up (`initialise`), so rates exist before the first event.
Importing this module turns off prometheus-client's `_created` series for the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.samples import Sample

from server.engine.devices import memory_readings
from server.settings import ModelSpec, Settings, Task

# Seconds. Request latency reaches the longest deadline a request may be given (request_timeout_cap_s).
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LONG = (120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
_LOAD = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# No `_created` series: a timestamp per labelled series that no dashboard or rule reads, doubling what is scraped.
disable_created_metrics()
DROP_REASONS = ("expired", "disconnected")


def latency_buckets(longest_s: float) -> tuple[float, ...]:
    """The latency ladder up to `longest_s`, ending at it: every answer within a deadline lands in a finite bucket."""
    ladder = [b for b in (*_LATENCY, *_LONG) if b < longest_s]
    return (*ladder, float(longest_s))


@dataclass(frozen=True)
class Tally:
    count: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class ModelTotals:
    """What one model has done since the process started, from the series below."""

    success: Tally  # requests answered 2xx, and their durations
    failure: Tally  # requests answered otherwise
    queue: Tally  # items that reached a batch, and how long they queued
    compute: Tally  # batches run, and their forward time (collate to split)
    items: int  # items run in those batches
    last_inference_s: float  # Unix time of the last batch's end; 0: none yet


class Metrics:
    def __init__(self, settings: Settings | None = None) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        longest = settings.server.request_timeout_cap_s if settings is not None else _LATENCY[-1]
        latency = latency_buckets(longest)
        self.requests = Counter(
            "perceiver_requests_total", "Requests answered (HTTP and gRPC)", ["route", "model", "status"], registry=r
        )
        self.request_duration = Histogram(
            "perceiver_request_duration_seconds",
            "Request latency, HTTP and gRPC (probes and /metrics excluded)",
            ["route", "model", "status"],
            buckets=latency,
            registry=r,
        )
        self.queue_wait = Histogram(
            "perceiver_queue_wait_seconds", "Time from enqueue to batch start", ["model"], buckets=latency, registry=r
        )
        self.inference = Histogram(
            "perceiver_inference_duration_seconds",
            "Batch forward time (collate to split)",
            ["model"],
            buckets=latency,
            registry=r,
        )
        self.batch_size = Histogram(
            "perceiver_batch_size", "Requests per executed batch", ["model"], buckets=_BATCH, registry=r
        )
        self.queue_depth = Gauge("perceiver_queue_depth", "Requests waiting in a model's queue", ["model"], registry=r)
        self.inflight = Gauge("perceiver_inflight_requests", "Inference requests being handled now", registry=r)
        self.model_load = Histogram(
            "perceiver_model_load_seconds", "Model load time", ["model"], buckets=_LOAD, registry=r
        )
        self.load_failures = Counter(
            "perceiver_model_load_failures_total", "Model loads that failed", ["model"], registry=r
        )
        self.models_loaded = Gauge("perceiver_models_loaded", "Models loaded and ready", registry=r)
        self.memory_used = Gauge(
            "perceiver_device_memory_used_bytes",
            "Device memory in use (cuda: allocated and reserved by the caching allocator; cpu: process RSS)",
            ["device", "kind"],
            registry=r,
        )
        self.memory_capacity = Gauge(
            "perceiver_device_memory_capacity_bytes", "Device memory in all (cpu: physical RAM)", ["device"], registry=r
        )
        self.dropped = Counter(
            "perceiver_requests_dropped_total", "Requests dropped before inference", ["model", "reason"], registry=r
        )
        self.last_inference = Gauge(
            "perceiver_last_inference_timestamp_seconds", "Unix time a model's last batch ended", ["model"], registry=r
        )

        # Background jobs. With the Redis store, queued counts the shared queue (every replica reports it: take
        # the max across pods, not the sum); running, finished and claimed count this process's work.
        self.jobs_queued = Gauge("perceiver_jobs_queued", "Jobs accepted and waiting to run", ["kind"], registry=r)
        self.jobs_running = Gauge("perceiver_jobs_running", "Jobs this process is running", ["kind"], registry=r)
        self.jobs_finished = Counter(
            "perceiver_jobs_finished_total", "Jobs finished (done, failed, cancelled)", ["kind", "status"], registry=r
        )
        self.jobs_claimed = Counter(
            "perceiver_jobs_claimed_total",
            "Jobs this process took over from a replica that stopped heartbeating (or handed them back)",
            ["kind"],
            registry=r,
        )

    def observe_request(self, route: str, model: str, status: int, seconds: float, *, timed: bool = True) -> None:
        """A request answered `status` after `seconds`; its latency is observed only when `timed`."""
        self.requests.labels(route=route, model=model, status=str(status)).inc()
        if timed:
            self.request_duration.labels(route=route, model=model, status=str(status)).observe(seconds)

    def observe_batch(self, model: str, seconds: float) -> None:
        """A batch of `model` ran for `seconds` (collate to split), ending now."""
        self.inference.labels(model=model).observe(seconds)
        self.last_inference.labels(model=model).set(time.time())

    def model_totals(self, model: str) -> ModelTotals:
        success = _tally(self.request_duration, model, lambda labels: labels["status"].startswith("2"))
        failure = _tally(self.request_duration, model, lambda labels: not labels["status"].startswith("2"))
        batches = _tally(self.batch_size, model)
        last = [s.value for s in _samples(self.last_inference, model) if s.name.endswith("_seconds")]
        return ModelTotals(
            success=success,
            failure=failure,
            queue=_tally(self.queue_wait, model),
            compute=_tally(self.inference, model),
            items=round(batches.seconds),  # the batch-size histogram's sum: items, not seconds
            last_inference_s=max(last, default=0.0),
        )

    def initialise(
        self, models: Iterable[ModelSpec], routes: Mapping[Task, Iterable[str]], *, job_kinds: Iterable[str] = ()
    ) -> None:
        """Create each model's series at zero: requests (status 200) and latency on the routes of its task
        (`routes`), and its queue, batch, load and drop series; and each job kind's."""
        for kind in job_kinds:
            self.jobs_queued.labels(kind=kind).set(0)
            self.jobs_running.labels(kind=kind).set(0)
            self.jobs_claimed.labels(kind=kind)
            for status in ("done", "failed", "cancelled"):
                self.jobs_finished.labels(kind=kind, status=status)
        for spec in models:
            name = spec.name
            for route in routes.get(spec.task, ()):
                self.requests.labels(route=route, model=name, status="200")
                self.request_duration.labels(route=route, model=name, status="200")
            for family in (self.queue_wait, self.inference, self.batch_size, self.model_load, self.load_failures):
                family.labels(model=name)
            self.queue_depth.labels(model=name).set(0)
            for reason in DROP_REASONS:
                self.dropped.labels(model=name, reason=reason)

    def render(self) -> bytes:
        """The Prometheus text exposition, with device memory read now."""
        for device, kind, value in memory_readings():
            if kind == "total":
                self.memory_capacity.labels(device=device).set(value)
            else:
                self.memory_used.labels(device=device, kind=kind).set(value)
        return generate_latest(self.registry)


def _samples(metric: MetricWrapperBase, model: str) -> list[Sample]:
    return [s for family in metric.collect() for s in family.samples if s.labels.get("model") == model]


def _tally(metric: Histogram, model: str, keep: Callable[[dict[str, str]], bool] | None = None) -> Tally:
    """(count, sum) of a histogram's series of `model`, over the label sets `keep(labels)` accepts."""
    count, total = 0, 0.0
    for sample in _samples(metric, model):
        if keep is not None and not keep(sample.labels):
            continue
        if sample.name.endswith("_count"):
            count += int(sample.value)
        elif sample.name.endswith("_sum"):
            total += sample.value
    return Tally(count, total)
