"""Triton's statistics extension: per model, counts and cumulative durations (ns) in Triton's JSON (its
`ModelStatisticsResponse` with the proto field names; gRPC parses the same dict into the message).

Every number is read from the Prometheus series of /metrics (`Metrics.model_totals`), so both views agree:

| Triton field | from |
|---|---|
| success, fail | `perceiver_request_duration_seconds` of the model: 2xx answers, and the others (any route) |
| queue | `perceiver_queue_wait_seconds`: per item that reached a batch |
| compute_infer | `perceiver_inference_duration_seconds`: per batch (collate, forward, split) |
| execution_count, inference_count | `perceiver_batch_size`: batches, and the items they ran |
| last_inference | `perceiver_last_inference_timestamp_seconds`, in ms |

compute_input and compute_output (preparing items and building answers) are not timed apart: they are zero, as are
the cache counters (no response cache). Per-batch-size statistics are not kept: `batch_stats` is empty.
"""

from __future__ import annotations

from typing import Any

from server.engine.metrics import Metrics, Tally
from server.settings import Settings
from server.v2.service import VERSION, find_model

_NS = 1e9


def _duration(tally: Tally) -> dict[str, int]:
    return {"count": tally.count, "ns": round(tally.seconds * _NS)}


def _zero() -> dict[str, int]:
    return {"count": 0, "ns": 0}


def _one(metrics: Metrics, model: str) -> dict[str, Any]:
    totals = metrics.model_totals(model)
    return {
        "name": model,
        "version": VERSION,
        "last_inference": round(totals.last_inference_s * 1000),
        "inference_count": totals.items,
        "execution_count": totals.compute.count,
        "inference_stats": {
            "success": _duration(totals.success),
            "fail": _duration(totals.failure),
            "queue": _duration(totals.queue),
            "compute_input": _zero(),
            "compute_infer": _duration(totals.compute),
            "compute_output": _zero(),
            "cache_hit": _zero(),
            "cache_miss": _zero(),
        },
        "batch_stats": [],
    }


def model_statistics(settings: Settings, metrics: Metrics, name: str | None, version: str | None) -> dict[str, Any]:
    """Statistics of the model `name`, or of every configured model when `name` is None or empty."""
    names = [find_model(settings, name, version).name] if name else list(settings.models)
    return {"model_stats": [_one(metrics, model) for model in names]}
