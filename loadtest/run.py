"""Headless load test: sweep concurrency per route, with and without dynamic batching, and write a report.

    python -m loadtest.run                                   # built-in small models, every route they serve
    python -m loadtest.run --models real --checkpoints bench-results/ckpt \\
        --concurrency 1,4,16 --max-batch-size 8 --duration-s 30     # DeepMind configs, random weights
    python -m loadtest.run --config serve.toml --routes /fill-mask
    python -m loadtest.run --url http://127.0.0.1:8000       # a server already running (no comparison)
    python -m loadtest.run --compare observability           # the cost of access logs and traces

Started servers are `perceiver-serve` subprocesses on loopback: one with the configured batching
limits and one with max_batch_size = 1 (or, with --compare observability, the same server with its JSON access
log on and every request traced, exported over OTLP/HTTP to a local receiver), measured back to back at each
concurrency; then, per route,
the model's in-process batched throughput on the same payloads. Each step is bounded by
--duration-s and --max-requests. Writes report.csv, report.json and PNG plots under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtest import payloads as payload_lib
from loadtest.client import BatchStats, open_clients, run_step, scrape_batches
from loadtest.inprocess import InProcessResult
from loadtest.otlp_sink import otlp_sink
from loadtest.report import BATCHING, NO_BATCHING, Row, throughput_ratios, write
from loadtest.servers import Server, read_config, serve, serve_naive, with_batching, write_model_set
from loadtest.target import RouteTarget, TargetError, auth_headers, check_target, discover
from loadtest.workers import host


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers separated by commas, e.g. 1,4,16,64")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--models",
        choices=["small", "mid", "real"],
        default=None,
        help="built-in random-weight model set to serve (default: small)",
    )
    src.add_argument("--config", type=Path, help="serve this perceiver-serve TOML config")
    src.add_argument("--url", help="load-test a running server instead of starting one (loopback only)")
    p.add_argument("--url-no-batching", help="with --url: a second running server with max_batch_size 1")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url (a server you own)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("LOADTEST_API_KEY"),
        help="sent as a Bearer token, for servers with api_keys (default: $LOADTEST_API_KEY)",
    )
    p.add_argument("--checkpoints", type=Path, help="folder for built-in checkpoints (default: OUT/checkpoints)")
    p.add_argument("--routes", help="comma-separated routes to test (default: every route the server serves)")
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16, 64], help="concurrent clients per step")
    p.add_argument("--duration-s", type=float, default=10.0, help="sending time per step")
    p.add_argument("--max-requests", type=int, default=2000, help="requests per step at most")
    p.add_argument("--timeout-s", type=float, default=120.0, help="client timeout per request")
    p.add_argument("--max-batch-size", type=int, help="override every model's max_batch_size")
    p.add_argument("--max-delay-ms", type=float, help="override every model's max_delay_ms")
    p.add_argument("--max-queue", type=int, help="override every model's max_queue")
    p.add_argument("--text-bytes", type=int, help="every text this many bytes (default: a mix of lengths)")
    p.add_argument("--payloads", type=int, default=48, help="distinct payloads per route (cycled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compare", action="store_true", help="skip the second server")
    p.add_argument(
        "--compare",
        choices=["batching", "observability", "naive"],
        default="batching",
        help="the second server: max_batch_size = 1 (batching), or access log and tracing on (observability); "
        "naive: max_batch_size = 1 and the naive FastAPI + transformers peer (loadtest.naive, /fill-mask only)",
    )
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process model throughput")
    p.add_argument("--flops", action="store_true", help="FLOPs per request and the share of matmul peak per route")
    p.add_argument("--out", type=Path, default=Path("bench-results/loadtest"))
    return p


def _server_config(args: argparse.Namespace) -> dict[str, Any]:
    if args.config:
        config = read_config(args.config)
    else:
        name = args.models or "small"
        root = args.checkpoints or args.out / "checkpoints"
        # Generous deadline: a closed loop of 64 clients on a CPU queues for a while by design.
        config = {"server": {"request_timeout_s": args.timeout_s}, "models": write_model_set(name, root)}
    return with_batching(
        config, max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue
    )


def _limits(config: dict[str, Any] | None, model: str) -> tuple[int | None, int | None]:
    """(max_batch_size, max_queue) of `model` as the server resolves them; unknown for an external target."""
    if config is None:
        return None, None
    from server.settings import build_settings

    spec = build_settings(config).models.get(model)
    return (spec.max_batch_size, spec.max_queue) if spec else (None, None)


@dataclass
class Variant:
    """One server under test: started here from `config`, or already running at `url`."""

    name: str
    config: dict[str, Any] | None
    url: str | None = None
    server: Server | None = None  # the process, when started here (for its CPU time)
    targets: dict[str, RouteTarget] = field(default_factory=dict)
    observed: bool = False  # started with the JSON access log at info and every request traced over OTLP
    naive: bool = False  # the naive FastAPI + transformers peer, on the fill-mask model's checkpoint


OBSERVED, NAIVE = "observed", "naive"
OBSERVED_ARGS = ("--log-level", "info", "--log-format", "json")


def _variants(args: argparse.Namespace, config: dict[str, Any] | None) -> list[Variant]:
    if args.url:
        first = Variant(
            BATCHING if args.url_no_batching else "server", None, check_target(args.url, allow_remote=args.allow_remote)
        )
        if not args.url_no_batching:
            return [first]
        return [first, Variant(NO_BATCHING, None, check_target(args.url_no_batching, allow_remote=args.allow_remote))]
    assert config is not None
    variants = [Variant(BATCHING, config)]
    if args.no_compare:
        return variants
    if args.compare == "observability":
        variants.append(Variant(OBSERVED, config, observed=True))
    else:
        variants.append(Variant(NO_BATCHING, with_batching(config, max_batch_size=1)))
    if args.compare == "naive":
        variants.append(Variant(NAIVE, None, naive=True))
    return variants


async def _step(
    variant: Variant,
    clients: list[httpx.AsyncClient],
    route: str,
    payloads: list[Any],
    concurrency: int,
    args: argparse.Namespace,
) -> Row:
    target = variant.targets[route]
    batch, queue = _limits(variant.config, target.model)
    before = (await scrape_batches(clients[0])).get(target.model)
    cpu_before = variant.server.cpu_s() if variant.server else math.nan
    step = await run_step(
        clients, route, payloads, concurrency=concurrency, max_requests=args.max_requests, duration_s=args.duration_s
    )
    cpu_s = (variant.server.cpu_s() if variant.server else math.nan) - cpu_before
    after = (await scrape_batches(clients[0])).get(target.model)
    delta = after - before if after is not None and before is not None else (after or BatchStats())
    row = Row.of(variant.name, target.model, step, delta, max_batch_size=batch, max_queue=queue, server_cpu_s=cpu_s)
    print(
        f"  {variant.name:11s} {route:17s} c={concurrency:<3d} {row.rps:8.2f} req/s  p50 {row.p50_ms:8.1f}"
        f"  p95 {row.p95_ms:8.1f}  p99 {row.p99_ms:8.1f} ms  batch {row.mean_batch_size:5.2f}  "
        f"cpu {row.server_cpu_ms_per_request:6.2f} ms/req  "
        f"429 {row.n_429}  other {row.n_other_errors}  (n={row.requests})",
        flush=True,
    )
    return row


async def _warm_up(
    variant: Variant, clients: list[httpx.AsyncClient], route: str, payloads: list[Any], args: argparse.Namespace
) -> str | None:
    """Load the model if needed and run a full batch or two, unreported; the failure, if it failed."""
    batch, _ = _limits(variant.config, variant.targets[route].model)
    warm = min(batch or 4, 8)
    step = await run_step(clients, route, payloads, concurrency=warm, max_requests=2 * warm, duration_s=args.timeout_s)
    return None if step.ok else f"{variant.name} {route}: skipped, warm-up failed: {dict(step.errors)}"


async def _sweep(
    variants: list[Variant], payloads: dict[str, list[Any]], args: argparse.Namespace, notes: list[str]
) -> tuple[list[Row], list[InProcessResult]]:
    """Per route and concurrency, one step on each server back to back (alternating which goes first, so
    a machine getting busier or quieter does not favour one); then the route's in-process measurement."""
    rows: list[Row] = []
    inprocess: list[InProcessResult] = []
    width = max([*args.concurrency, 8])
    async with AsyncExitStack() as stack:
        clients = {
            v.name: await stack.enter_async_context(
                open_clients(v.url or "", count=width, timeout_s=args.timeout_s, headers=auth_headers(args.api_key))
            )
            for v in variants
        }
        for route, route_payloads in payloads.items():
            serving = []
            for v in (v for v in variants if route in v.targets):
                failure = await _warm_up(v, clients[v.name], route, route_payloads, args)
                if failure:
                    notes.append(failure)
                    print(f"  {failure}", flush=True)
                else:
                    serving.append(v)
            for i, concurrency in enumerate(args.concurrency):
                for v in serving if i % 2 == 0 else serving[::-1]:
                    rows.append(await _step(v, clients[v.name], route, route_payloads, concurrency, args))
            if serving and not args.no_inprocess and serving[0].config is not None:
                result = _inprocess(route, serving[0], route_payloads, args)
                if result is not None:
                    inprocess.append(result)
    return rows, inprocess


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    if args.url_no_batching and not args.url:
        raise TargetError("--url-no-batching goes with --url")
    started = time.time()
    config = None if args.url else _server_config(args)
    variants = _variants(args, config)
    wanted = set(args.routes.split(",")) if args.routes else None
    notes: list[str] = []
    load_before = os.getloadavg()
    with ExitStack() as sinks:
        sink = sinks.enter_context(otlp_sink()) if any(v.observed for v in variants) else None
        with ExitStack() as stack:
            for v in variants:
                if v.naive:
                    print(f"{v.name}: starting the naive peer", flush=True)
                    v.server = stack.enter_context(serve_naive(_mlm_source(config), workdir=args.out / "servers"))
                    v.url = v.server.url
                elif v.url is None:
                    print(f"{v.name}: starting a server", flush=True)
                    observing = v.observed and sink is not None
                    v.server = stack.enter_context(
                        serve(
                            v.config or {},
                            workdir=args.out / "servers",
                            name=f"server-{v.name}",
                            extra_args=OBSERVED_ARGS if observing else (),
                            env=_traced_to(sink[0]) if sink is not None and observing else None,
                        )
                    )
                    v.url = v.server.url
                found = discover(v.url, headers=auth_headers(args.api_key))
                v.targets = {r: t for r, t in found.items() if wanted is None or r in wanted}
                if not v.targets:
                    raise TargetError(f"{v.url} serves none of the routes asked for ({args.routes or 'any'})")
            payloads = {route: _payloads(route, target, args) for route, target in variants[0].targets.items()}
            rows, inprocess = asyncio.run(_sweep(variants, payloads, args, notes))
        if sink is not None:  # counted once the servers have stopped and flushed their spans
            notes.append(f"OTLP receiver: {sink[1].exports} trace exports, {sink[1].bytes} bytes")
    meta = {
        "command": "python -m loadtest.run " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": host(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "notes": notes,
    }
    if config is not None:
        from server.engine.devices import cpu_threads
        from server.settings import build_settings

        meta["server_cpu_threads"] = cpu_threads(build_settings(config))
    if any(v.observed for v in variants):
        meta["observability_cost"] = throughput_ratios(rows, OBSERVED, BATCHING)
    if any(v.naive for v in variants):
        meta["over_naive"] = {v: throughput_ratios(rows, v, NAIVE) for v in (BATCHING, NO_BATCHING)}
    if args.flops and config is not None:
        from loadtest.flops import peak_fractions

        meta["matmul_peak"] = peak_fractions(config, payloads, rows, variant=BATCHING)
    doc = write(args.out, rows, inprocess, meta)
    _print_summary(doc)
    return doc


def _traced_to(endpoint: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "perceiver-serve-loadtest",
    }


def _mlm_source(config: dict[str, Any] | None) -> str:
    """The checkpoint folder of the fill-mask model the server serves by default: the naive peer's weights."""
    from server.settings import Task, build_settings

    spec = build_settings(config or {}).default_model(Task.FILL_MASK)
    if spec is None:
        raise TargetError("--compare naive needs a fill-mask model")
    return spec.source


def _payloads(route: str, target: RouteTarget, args: argparse.Namespace) -> list[Any]:
    rng = np.random.default_rng(args.seed)
    if route in ("/fill-mask", "/classify-text"):
        return payload_lib.BUILDERS[route](rng, args.payloads, target.shapes, fixed_bytes=args.text_bytes)
    return payload_lib.BUILDERS[route](rng, args.payloads, target.shapes)


def _inprocess(route: str, variant: Variant, payloads: list[Any], args: argparse.Namespace) -> InProcessResult | None:
    """The model's own batched throughput on `payloads`, at the batching server's max_batch_size."""
    from loadtest.inprocess import SUPPORTED, measure

    if route not in SUPPORTED or variant.config is None:
        return None
    model = variant.targets[route].model
    batch, _ = _limits(variant.config, model)
    result = measure(
        route,
        model,
        variant.config,
        payloads,
        batch_size=batch or 1,
        duration_s=args.duration_s,
        max_items=args.max_requests,
    )
    print(
        f"  in-process  {route:17s} batch {result.batch_size:<3d} {result.items_per_s:8.2f} items/s "
        f"({result.items} items; prepare {result.prepare_s:.2f} s, forward {result.forward_s:.2f} s, "
        f"{result.threads} thread(s))",
        flush=True,
    )
    return result


def _print_summary(doc: dict[str, Any]) -> None:
    summary = doc["summary"]
    for route, s in summary["routes"].items():
        parts = [f"{route}: saturation {s['saturation_rps']:.2f} req/s at c={s['saturation_concurrency']}"]
        if "server_efficiency" in s:
            parts.append(
                f"server/in-process {s['server_efficiency']:.2f} "
                f"({s['inprocess_items_per_s']:.2f} items/s at batch {s['inprocess_batch_size']})"
            )
        if "batching_speedup" in s:
            parts.append("batching x " + ", ".join(f"c={c}: {v:.2f}" for c, v in s["batching_speedup"].items()))
        print("; ".join(parts))
    for variant, ratio in doc.get("over_naive", {}).items():
        print(f"{variant} / naive peer: " + ", ".join(f"{k}: {v:.2f}" for k, v in ratio["throughput_ratio"].items()))
    peak = doc.get("matmul_peak")
    for route, p in (peak or {}).get("routes", {}).items():
        print(
            f"{route}: {p['gflop_per_request']:.3f} GFLOP/request x {p['saturation_rps']:.2f} req/s = "
            f"{p['fraction_of_peak']:.1%} of the {peak['dtype']} matmul peak ({peak['peak_gflop_s']:.1f} GFLOP/s)"
        )
    cost = doc.get("observability_cost")
    if cost:
        print(f"throughput with access log and tracing / without: geomean {cost['geomean']:.3f}")
    checks = summary["checks"]
    print(
        f"non-429 errors: {checks['non_429_errors']}; 429s: {checks['n_429']}"
        + (f" (within the queue limit: {checks['429_within_queue_limit']})" if checks["429_within_queue_limit"] else "")
    )
    print(
        "report:",
        ", ".join(["report.csv", "report.json", *(Path(p).name for p in doc["plots"])]),
        "in",
        Path(doc["plots"][0]).parent if doc["plots"] else "",
    )


def main() -> None:
    try:
        run()
    except TargetError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
