"""The three transports of the Open Inference Protocol side by side: gRPC (raw tensor contents), HTTP with Triton's
binary tensor data, and HTTP/JSON, on one server and the same requests, sent through tritonclient's asyncio clients
as Triton users send them. Closed loop: each of C clients sends its next request when the last one is answered.

For each task and client count, the three transports run back to back (their order rotating from step to step)
and the throughput ratios gRPC / HTTP-binary and HTTP-JSON / HTTP-binary are reported. Every request asks for
every output, in the transport's own encoding (JSON: texts as strings, images as base64, outputs as JSON).

    python -m loadtest.bench_protocols --duration-s 8 --out bench-results/protocols

The server runs the small random model set (loadtest/servers.py) unless --config names another; the load
generator shares the machine with it, as in every benchmark here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_grpc
import tritonclient.http.aio as triton_http

from loadtest.payloads import encode_image, masked_text, synth_image
from loadtest.servers import read_config, serve, write_model_set
from loadtest.workers import host

TRANSPORTS = ("grpc", "http-binary", "http-json")
TASKS = {"fill-mask": "fill-mask", "classify-image": "image-classification"}  # bench name -> server task
OUTPUTS = {
    "fill-mask": ["mask_positions", "logits", "token_ids", "scores", "tokens"],
    "classify-image": ["logits", "labels"],
}
Send = Callable[[], Any]  # one request, awaited


@dataclass
class Step:
    task: str
    clients: int
    transport: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def payloads(task: str, count: int, seed: int) -> list[bytes]:
    """Request data: UTF-8 texts of ~100 bytes with a masked word, or 224x224 JPEG files."""
    rng = np.random.default_rng(seed)
    if task == "fill-mask":
        return [masked_text(rng, target_bytes=100).encode() for _ in range(count)]
    return [encode_image(synth_image(rng, 224, 224), "JPEG") for _ in range(count)]


def _inputs(module: Any, task: str, data: bytes, *, binary: bool) -> list[Any]:
    name = "text" if task == "fill-mask" else "image"
    element = data if binary or task == "fill-mask" else base64.b64encode(data)
    tensor = module.InferInput(name, [1], "BYTES")
    options = {} if module is triton_grpc else {"binary_data": binary}
    return [tensor.set_data_from_numpy(np.array([element], dtype=object), **options)]


def senders(transport: str, task: str, model: str, data: list[bytes], clients: dict[str, Any]) -> list[Send]:
    """One zero-argument coroutine function per payload, sending it over `transport`."""
    out: list[Send] = []
    for item in data:
        if transport == "grpc":
            inputs = _inputs(triton_grpc, task, item, binary=True)
            wanted = [triton_grpc.InferRequestedOutput(n) for n in OUTPUTS[task]]
            client = clients["grpc"]
        else:
            binary = transport == "http-binary"
            inputs = _inputs(triton_http, task, item, binary=binary)
            wanted = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS[task]]
            client = clients["http"]
        out.append(lambda c=client, i=inputs, w=wanted: c.infer(model, i, outputs=w))
    return out


async def run_step(task: str, transport: str, sends: Sequence[Send], *, clients: int, duration_s: float) -> Step:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + duration_s
    turn = iter(range(10**9))

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < stop:
            send = sends[next(turn) % len(sends)]
            started = time.perf_counter()
            try:
                await send()
            except Exception:  # counted; the step goes on
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.monotonic() - began
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return Step(
        task,
        clients,
        transport,
        len(latencies),
        errors,
        elapsed,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
    )


async def sweep(http: str, grpc: str, models: dict[str, str], args: argparse.Namespace) -> list[Step]:
    clients = {
        "grpc": triton_grpc.InferenceServerClient(grpc),
        "http": triton_http.InferenceServerClient(http, conn_limit=max(args.clients) * 2),
    }
    steps: list[Step] = []
    try:
        rotation = 0
        for task in args.tasks:
            data = payloads(task, args.payloads, args.seed)
            sends = {t: senders(t, task, models[task], data, clients) for t in TRANSPORTS}
            for t in TRANSPORTS:  # warm-up: connections, first batches, allocator
                await run_step(task, t, sends[t], clients=max(args.clients), duration_s=args.warmup_s)
            for count in args.clients:
                order = TRANSPORTS[rotation:] + TRANSPORTS[:rotation]
                rotation = (rotation + 1) % len(TRANSPORTS)
                for t in order:
                    step = await run_step(task, t, sends[t], clients=count, duration_s=args.duration_s)
                    print(
                        f"{task:15s} c={count:<3d} {t:12s} {step.throughput:8.1f} req/s  p50 {step.p50_ms:7.2f} ms"
                        f"  errors {step.errors}",
                        flush=True,
                    )
                    steps.append(step)
    finally:
        await clients["grpc"].close()
        await clients["http"].close()
    return steps


def ratios(steps: Sequence[Step]) -> list[dict[str, Any]]:
    rows = []
    for task in dict.fromkeys(s.task for s in steps):
        for count in dict.fromkeys(s.clients for s in steps if s.task == task):
            by = {s.transport: s for s in steps if s.task == task and s.clients == count}
            base = by["http-binary"].throughput
            rows.append(
                {
                    "task": task,
                    "clients": count,
                    **{f"{t}_rps": round(by[t].throughput, 1) for t in TRANSPORTS},
                    **{f"{t}_p50_ms": round(by[t].p50_ms, 2) for t in TRANSPORTS},
                    "grpc_over_binary": round(by["grpc"].throughput / base, 2) if base else None,
                    "json_over_binary": round(by["http-json"].throughput / base, 2) if base else None,
                    "errors": sum(s.errors for s in by.values()),
                }
            )
    return rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_protocols", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=lambda t: t.split(","), default=list(TASKS), help="fill-mask,classify-image")
    p.add_argument("--clients", type=_ints, default=[1, 16], help="closed-loop clients per step (1,16)")
    p.add_argument("--duration-s", type=float, default=8.0, help="sending time per step and transport")
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--payloads", type=int, default=32, help="distinct requests per task (cycled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, help="serve this TOML config (default: the small model set)")
    p.add_argument("--checkpoints", type=Path, help="where the small model set is written (default: OUT/checkpoints)")
    p.add_argument("--out", type=Path, default=Path("bench-results/protocols"))
    return p


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from server.settings import Task, build_settings

    args = parser().parse_args(argv)
    unknown = set(args.tasks) - set(TASKS)
    if unknown:
        raise SystemExit(f"unknown task(s) {sorted(unknown)}; choose from {', '.join(TASKS)}")
    config = (
        read_config(args.config)
        if args.config
        else {"models": write_model_set("small", args.checkpoints or args.out / "checkpoints")}
    )
    config = {**config, "server": {"device": "cpu", **config.get("server", {})}}
    settings = build_settings(config)
    models = {}
    for task in args.tasks:
        spec = settings.default_model(Task(TASKS[task]))
        if spec is None:
            raise SystemExit(f"the config has no {TASKS[task]} model")
        models[task] = spec.name
    load_before = os.getloadavg()
    with serve(config, workdir=args.out / "servers", name="protocols", grpc=True) as server:
        assert server.grpc is not None
        steps = asyncio.run(sweep(server.url.removeprefix("http://"), server.grpc, models, args))
    doc = {
        "command": "python -m loadtest.bench_protocols " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": {**host(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "models": models,
        "steps": [{**asdict(s), "throughput": round(s.throughput, 2)} for s in steps],
        "ratios": ratios(steps),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "protocols.json").write_text(json.dumps(doc, indent=2) + "\n")
    for row in doc["ratios"]:
        print(json.dumps(row))
    return doc


if __name__ == "__main__":
    run()
