"""Prometheus metrics on a per-app CollectorRegistry. The names are a contract (HPA rules, dashboards)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.engine.devices import memory_readings

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LOAD = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "perceiver_requests_total", "HTTP requests answered", ["route", "model", "status"], registry=r
        )
        self.request_duration = Histogram(
            "perceiver_request_duration_seconds",
            "HTTP request latency",
            ["route", "model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_wait = Histogram(
            "perceiver_queue_wait_seconds", "Time from enqueue to batch start", ["model"], buckets=_LATENCY, registry=r
        )
        self.inference = Histogram(
            "perceiver_inference_duration_seconds",
            "Batch forward time (collate to split)",
            ["model"],
            buckets=_LATENCY,
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
        self.models_loaded = Gauge("perceiver_models_loaded", "Models loaded and ready", registry=r)
        self.device_memory = Gauge(
            "perceiver_device_memory_bytes", "Device memory (cpu: process RSS, RAM)", ["device", "kind"], registry=r
        )
        self.dropped = Counter(
            "perceiver_requests_dropped_total", "Requests dropped before inference", ["model", "reason"], registry=r
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

    def render(self) -> bytes:
        """The Prometheus text exposition, with device memory read now."""
        for device, kind, value in memory_readings():
            self.device_memory.labels(device=device, kind=kind).set(value)
        return generate_latest(self.registry)
