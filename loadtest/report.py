"""Load-test report: one row per (variant, route, concurrency), a summary of ratios and checks, CSV, JSON, plots.

Variants: `batching` (the configured limits) and `no-batching` (max_batch_size 1), or `server`
for a target the runner did not start. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.client import BatchStats, StepResult
from loadtest.inprocess import InProcessResult

COLUMNS = (
    "variant",
    "route",
    "model",
    "concurrency",
    "max_batch_size",
    "max_queue",
    "requests",
    "ok",
    "elapsed_s",
    "rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "p99_over_p50",
    "error_rate",
    "n_429",
    "n_other_errors",
    "mean_batch_size",
    "batches",
    "server_cpu_ms_per_request",
)
BATCHING, NO_BATCHING = "batching", "no-batching"


@dataclass(frozen=True)
class Row:
    variant: str
    route: str
    model: str
    concurrency: int
    max_batch_size: int | None
    max_queue: int | None
    requests: int
    ok: int
    elapsed_s: float
    rps: float  # 2xx answers per second
    p50_ms: float  # latency percentiles of 2xx answers
    p95_ms: float
    p99_ms: float
    p99_over_p50: float
    error_rate: float  # non-2xx (and no answer) / requests
    n_429: int
    n_other_errors: int
    mean_batch_size: float  # from the perceiver_batch_size histogram's deltas over the step
    batches: int
    server_cpu_ms_per_request: float  # the server process's CPU time over the step / requests (NaN: not ours)
    errors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        variant: str,
        model: str,
        step: StepResult,
        batches: BatchStats,
        *,
        max_batch_size: int | None,
        max_queue: int | None,
        server_cpu_s: float = math.nan,
    ) -> Row:
        p50, p95, p99 = (step.percentile(q) * 1000 for q in (50, 95, 99))
        return cls(
            variant,
            step.route,
            model,
            step.concurrency,
            max_batch_size,
            max_queue,
            step.requests,
            step.ok,
            round(step.elapsed_s, 3),
            step.ok / step.elapsed_s if step.elapsed_s else 0.0,
            p50,
            p95,
            p99,
            p99 / p50 if p50 else math.nan,
            (step.requests - step.ok) / max(step.requests, 1),
            step.overloaded,
            step.other_errors,
            batches.mean,
            int(batches.batches),
            server_cpu_s * 1000 / max(step.requests, 1),
            dict(step.errors),
        )


def throughput_ratios(rows: Sequence[Row], variant: str, baseline: str) -> dict[str, Any]:
    """Throughput of `variant` over `baseline`, per route and concurrency measured on both, and their geometric
    mean."""
    base = {(r.route, r.concurrency): r.rps for r in rows if r.variant == baseline}
    ratios = {
        f"{r.route} c={r.concurrency}": r.rps / base[(r.route, r.concurrency)]
        for r in rows
        if r.variant == variant and base.get((r.route, r.concurrency))
    }
    geomean = math.exp(sum(math.log(v) for v in ratios.values()) / len(ratios)) if ratios else math.nan
    return {"throughput_ratio": ratios, "geomean": geomean}


def _rows(rows: Sequence[Row], variant: str, route: str) -> list[Row]:
    return sorted((r for r in rows if r.variant == variant and r.route == route), key=lambda r: r.concurrency)


def knee(rows: Sequence[Row]) -> int | None:
    """The lowest concurrency reaching 90 % of the best throughput: more clients only queue longer."""
    if not rows:
        return None
    best = max(r.rps for r in rows)
    return min(r.concurrency for r in rows if r.rps >= 0.9 * best)


def summarise(rows: Sequence[Row], inprocess: Sequence[InProcessResult]) -> dict[str, Any]:
    """Per route: saturation throughput, server efficiency vs in-process, batching speedup, tail ratio; checks."""
    routes: dict[str, Any] = {}
    for route in dict.fromkeys(r.route for r in rows):
        served = _rows(rows, BATCHING, route) or _rows(rows, "server", route)
        off = {r.concurrency: r for r in _rows(rows, NO_BATCHING, route)}
        best = max(served, key=lambda r: r.rps)
        entry: dict[str, Any] = {
            "model": best.model,
            "saturation_rps": best.rps,
            "saturation_concurrency": best.concurrency,
            "knee_concurrency": knee(served),
        }
        below = [r for r in served if r.concurrency < (entry["knee_concurrency"] or 0)]
        entry["max_p99_over_p50_below_knee"] = max((r.p99_over_p50 for r in below), default=None)
        if off:
            pairs = [(r, off[r.concurrency]) for r in served if r.concurrency in off]
            entry["batching_speedup"] = {str(on.concurrency): on.rps / no.rps for on, no in pairs if no.rps}
            # Server CPU per request without batching / with it: what batching saves, whatever else runs.
            entry["batching_cpu_saving"] = {
                str(on.concurrency): no.server_cpu_ms_per_request / on.server_cpu_ms_per_request
                for on, no in pairs
                if on.server_cpu_ms_per_request > 0
            }
        model_rate = next((m for m in inprocess if m.route == route), None)
        if model_rate is not None:
            entry["inprocess_items_per_s"] = model_rate.items_per_s
            entry["inprocess_batch_size"] = model_rate.batch_size
            entry["server_efficiency"] = best.rps / model_rate.items_per_s
        routes[route] = entry
    unexpected_429 = [
        f"{r.variant} {r.route} c={r.concurrency}"
        for r in rows
        if r.n_429 and r.max_queue is not None and r.concurrency <= r.max_queue
    ]
    return {
        "routes": routes,
        "checks": {
            "non_429_errors": sum(r.n_other_errors for r in rows),
            "n_429": sum(r.n_429 for r in rows),
            "429_within_queue_limit": unexpected_429,
        },
    }


def write(out: Path, rows: Sequence[Row], inprocess: Sequence[InProcessResult], meta: dict[str, Any]) -> dict[str, Any]:
    """report.csv, report.json and the plots under `out`; returns the JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _round(v) for k, v in asdict(r).items()})
    doc = {
        **meta,
        "summary": summarise(rows, inprocess),
        "rows": [asdict(r) for r in rows],
        "inprocess": [{**asdict(m), "items_per_s": m.items_per_s} for m in inprocess],
    }
    (out / "report.json").write_text(json.dumps(doc, indent=2, default=_json_default, allow_nan=True))
    doc["plots"] = plot(out, rows, inprocess)
    return doc


def _round(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) and math.isfinite(v) else v


def _json_default(v: Any) -> Any:
    return str(v)


def plot(out: Path, rows: Sequence[Row], inprocess: Sequence[InProcessResult]) -> list[str]:
    """throughput.png, latency.png and (with both variants) batching.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes = list(dict.fromkeys(r.route for r in rows))
    variants = list(dict.fromkeys(r.variant for r in rows))
    paths = []

    fig, axes = _grid(plt, len(routes))
    for ax, route in zip(axes, routes, strict=False):
        for variant in variants:
            series = _rows(rows, variant, route)
            ax.plot([r.concurrency for r in series], [r.rps for r in series], marker="o", label=variant)
        model_rate = next((m for m in inprocess if m.route == route), None)
        if model_rate is not None:
            ax.axhline(
                model_rate.items_per_s, color="grey", linestyle=":", label=f"in-process, batch {model_rate.batch_size}"
            )
        _axes(ax, route, "requests/s")
    paths.append(_save(fig, out / "throughput.png", "Throughput vs concurrent clients"))

    fig, axes = _grid(plt, len(routes))
    for ax, route in zip(axes, routes, strict=False):
        for variant, style in zip(variants, ("-", "--", ":"), strict=False):
            series = _rows(rows, variant, route)
            x = [r.concurrency for r in series]
            for q, colour in (("p50", "C0"), ("p95", "C1"), ("p99", "C3")):
                ax.plot(
                    x, [getattr(r, f"{q}_ms") for r in series], style, color=colour, marker=".", label=f"{q} {variant}"
                )
        ax.set_yscale("log")
        _axes(ax, route, "latency (ms)")
    paths.append(_save(fig, out / "latency.png", "Latency percentiles vs concurrent clients"))

    if BATCHING in variants and NO_BATCHING in variants:
        fig, axes = _grid(plt, len(routes))
        for ax, route in zip(axes, routes, strict=False):
            on, off = _rows(rows, BATCHING, route), {r.concurrency: r for r in _rows(rows, NO_BATCHING, route)}
            pairs = [(r, off[r.concurrency]) for r in on if r.concurrency in off and off[r.concurrency].rps]
            labels = [str(a.concurrency) for a, _ in pairs]
            bars = ax.bar(labels, [a.rps / b.rps for a, b in pairs], color="C2")
            for bar, (a, _) in zip(bars, pairs, strict=True):
                ax.annotate(
                    f"batch {a.mean_batch_size:.1f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_title(route, fontsize=9)
            ax.set_xlabel("concurrent clients", fontsize=8)
            ax.set_ylabel("throughput, batching / no batching", fontsize=8)
            ax.tick_params(labelsize=7)
        paths.append(_save(fig, out / "batching.png", "What dynamic batching buys"))
    return paths


def _grid(plt: Any, n: int) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _axes(ax: Any, route: str, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_title(route, fontsize=9)
    ax.set_xlabel("concurrent clients", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)


def _save(fig: Any, path: Path, title: str) -> str:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)
