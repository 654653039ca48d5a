"""Thread policies for CPU inference, measured on the server's own engine: which way of spending the cores
serves the most fill-mask requests while the event loop stays responsive.

Each policy runs in a fresh process (the OpenMP wait policy is read when torch starts): closed-loop clients on
an asyncio loop prepare a text, queue it on the server's `Batcher` (the same dynamic batching, worker thread
and `FillMaskRunner` as `perceiver-serve`), await the result and build the JSON answer, as a route does.
A ticker on the same loop sleeps 5 ms at a time and records how late it wakes: what a `/health/live` probe
would wait for the loop. Policies, one model:

- `one-fewer`: intra-op threads = cores - 1, OpenMP's default (spinning) wait policy: the old default.
- `all-active`: every core, spinning wait policy.
- `all-passive`: every core, `OMP_WAIT_POLICY=PASSIVE` (idle OpenMP workers sleep).
- `adaptive`: every core or one, per batch shape, whichever the batcher measures faster (`Pays`; passive wait
  policy): the server's default.
- `process`: the forward in a worker process of its own (every core, passive), batches and logits crossing in
  shared memory (torch.multiprocessing); the server process keeps only the event loop and the batcher.

Two models busy at once (two copies of the model, half the clients each):

- `shared`: both forwards in the server process at once, every core each.
- `shared-adaptive`: both at once, each batcher choosing every core or one by measurement (the server's default).
- `serialised`: one forward at a time across the models (a process-wide lock), every core.
- `process-split`: a worker process per model, cores / 2 threads each.
- `process-shared`: a worker process per model, every core each.

    python -m loadtest.thread_policy --sizes tiny,mid,real --checkpoints bench-results/ckpt \\
        --out bench-results/thread-policy.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.workers import spawn

SIZES = {  # size -> (model set of loadtest.servers, its model, clients, max_batch_size, seconds warming, measured)
    "tiny": ("small", "small-fill-mask", 32, 32, 3.0, 15.0),
    "mid": ("mid", "mid-fill-mask", 32, 32, 5.0, 20.0),
    "real": ("real", "language-perceiver", 16, 8, 40.0, 90.0),  # warm: the batcher's first tries of each plan
}
ONE_MODEL = ("one-fewer", "all-active", "all-passive", "adaptive", "process")
TWO_MODELS = ("shared", "shared-adaptive", "serialised", "process-split", "process-shared")
ADAPTIVE = ("adaptive", "shared-adaptive")
TICK_S = 0.005


def policy_env(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy not in ("one-fewer", "all-active"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def policy_threads(policy: str, cores: int) -> int:
    if policy == "one-fewer":
        return max(1, cores - 1)
    return max(1, cores // 2) if policy == "process-split" else cores  # adaptive: every core, or one


# ---- the worker process per model (policy `process*`) ---------------------------------------------------------


def _serve_forwards(source: str, threads: int, requests: Any, answers: Any) -> None:
    """Child process: load the model, run every batch that arrives, send the logits back (shared memory)."""
    import torch

    torch.set_num_threads(threads)
    runner = _load(source, "ours").runner
    with torch.inference_mode():
        answers.put("ready")
        while (batch := requests.get()) is not None:
            answers.put(runner.forward(batch))


class ProcessRunner:
    """A runner whose forward runs in a child process; the other steps stay in this one."""

    def __init__(self, runner: Any, source: str, threads: int) -> None:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.runner, self.requests, self.answers = runner, ctx.Queue(), ctx.Queue()
        self.key, self.collate, self.split = runner.key, runner.collate, runner.split
        self.child = ctx.Process(target=_serve_forwards, args=(source, threads, self.requests, self.answers))
        self.child.start()
        assert self.answers.get(timeout=600) == "ready"

    def forward(self, batch: Any) -> Any:
        self.requests.put(batch)
        return self.answers.get()

    def close(self) -> None:
        self.requests.put(None)
        self.child.join(timeout=30)


class LockedRunner:
    """A runner whose forward holds a lock shared with other models' runners: one forward at a time."""

    def __init__(self, runner: Any, lock: threading.Lock) -> None:
        self.runner, self.lock = runner, lock
        self.key, self.collate, self.split = runner.key, runner.collate, runner.split

    def forward(self, batch: Any) -> Any:
        with self.lock:
            return self.runner.forward(batch)


# ---- one policy, in its own process --------------------------------------------------------------------------


def _load(source: str, name: str) -> Any:
    from server.engine.loading import load_model
    from server.settings import build_settings

    table = {"task": "fill-mask", "source": source, "random_weights": True}
    settings = build_settings({"server": {"device": "cpu", "catalog": False}, "models": {name: table}})
    return load_model(settings.models[name], settings)


async def _measure(
    runners: list[Any],
    threads: Sequence[int],
    clients: int,
    max_batch: int,
    warm_s: float,
    seconds: float,
    pids: list[int],
) -> dict[str, Any]:
    from loadtest.payloads import masked_text, text_lengths
    from loadtest.servers import process_cpu_s
    from server.engine.batching import Batcher

    batchers = [
        Batcher(name=f"m{i}", runner=r, max_batch_size=max_batch, max_delay_s=0.005, max_queue=4096, threads=threads)
        for i, r in enumerate(runners)
    ]
    base = runners[0].runner if isinstance(runners[0], ProcessRunner | LockedRunner) else runners[0]
    rng = np.random.default_rng(0)
    texts = [masked_text(rng, target_bytes=n) for n in text_lengths(rng, 64, max_tokens=base.codec.max_length)]
    counting, done, latencies, lags = False, [0] * len(runners), [], []
    stop = time.monotonic() + warm_s + seconds

    async def client(index: int) -> None:
        nonlocal counting
        model = index % len(batchers)
        while time.monotonic() < stop:
            start = time.perf_counter()
            item = base.prepare(texts[index % len(texts)], max_masks=64)
            outcome = await batchers[model].enqueue(item, deadline=time.monotonic() + 3600).future
            json.dumps(base.respond(item, outcome.result, top_k=5))
            if counting and time.monotonic() < stop:
                done[model] += 1
                latencies.append(time.perf_counter() - start)
            index += len(batchers) * 7

    async def ticker() -> None:
        while time.monotonic() < stop:
            start = time.perf_counter()
            await asyncio.sleep(TICK_S)
            if counting:
                lags.append(time.perf_counter() - start - TICK_S)

    tasks = [asyncio.create_task(client(i)) for i in range(clients)] + [asyncio.create_task(ticker())]
    await asyncio.sleep(warm_s)
    counting, cpu0, t0 = True, sum(process_cpu_s(p) for p in pids), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = sum(process_cpu_s(p) for p in pids), time.monotonic()
    await asyncio.gather(*tasks)
    for b in batchers:
        await b.close(timeout_s=60)
    lag_ms = np.array(lags) * 1e3
    return {
        "req_s": sum(done) / (t1 - t0),
        "per_model_req_s": [d / (t1 - t0) for d in done],
        "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies else None,
        "cpu_used": (cpu1 - cpu0) / (t1 - t0) / (os.cpu_count() or 1),  # fraction of the machine's cores
        "loop_lag_p99_ms": float(np.percentile(lag_ms, 99)),
        "loop_lag_max_ms": float(lag_ms.max()),
    }


def worker(policy: str, source: str, clients: int, max_batch: int, warm_s: float, seconds: float) -> dict[str, Any]:
    import torch

    cores = os.cpu_count() or 1
    threads = policy_threads(policy, cores)
    models = 2 if policy in TWO_MODELS else 1
    in_process = not policy.startswith("process")
    torch.set_num_threads(threads if in_process else 1)
    loaded = [_load(source, f"m{i}") for i in range(models)]
    runners: list[Any] = [m.runner for m in loaded]
    if policy == "serialised":
        lock = threading.Lock()
        runners = [LockedRunner(r, lock) for r in runners]
    elif not in_process:
        runners = [ProcessRunner(r, source, threads) for r in runners]
    pids = [os.getpid(), *(r.child.pid for r in runners if isinstance(r, ProcessRunner))]
    options = (threads, 1) if policy in ADAPTIVE else (threads,) if in_process else ()
    try:
        result = asyncio.run(_measure(runners, options, clients, max_batch, warm_s, seconds, pids))
    finally:
        for r in runners:
            if isinstance(r, ProcessRunner):
                r.close()
    return {"policy": policy, "threads": threads, "models": models, **result}


# ---- the driver ----------------------------------------------------------------------------------------------


def run_policy(policy: str, source: str, clients: int, max_batch: int, warm_s: float, seconds: float) -> dict[str, Any]:
    args = [policy, source, str(clients), str(max_batch), str(warm_s), str(seconds)]
    return {"policy": policy, **spawn("loadtest.thread_policy", args, env=policy_env(policy))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", nargs=6, metavar=("POLICY", "SOURCE", "CLIENTS", "MAX_BATCH", "WARM_S", "SECONDS"))
    p.add_argument("--sizes", default="tiny,mid,real")
    p.add_argument("--policies", default=",".join(ONE_MODEL))
    p.add_argument("--two-models", default=",".join(TWO_MODELS), help="policies for two busy models ('' for none)")
    p.add_argument("--two-models-size", default="mid")
    p.add_argument("--seconds", type=float, default=None, help="override each size's measured seconds")
    p.add_argument("--warm-s", type=float, default=None, help="override each size's warming seconds")
    p.add_argument("--checkpoints", type=Path, default=Path("bench-results/ckpt"))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if a.worker:
        policy, source, clients, max_batch, warm_s, seconds = a.worker
        print(json.dumps(worker(policy, source, int(clients), int(max_batch), float(warm_s), float(seconds))))
        return

    from loadtest.servers import write_model_set
    from loadtest.workers import host

    rows = []
    plan = [(size, policy) for size in a.sizes.split(",") if size for policy in a.policies.split(",") if policy]
    plan += [(a.two_models_size, policy) for policy in a.two_models.split(",") if policy]
    for size, policy in plan:
        model_set, model, clients, max_batch, warm_s, seconds = SIZES[size]
        source = write_model_set(model_set, a.checkpoints)[model]["source"]
        load = os.getloadavg()[0]
        measured = run_policy(policy, source, clients, max_batch, a.warm_s or warm_s, a.seconds or seconds)
        row = {"size": size, "load_before": load, **measured}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"host": host(), "rows": rows}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2))
    print_table(rows)


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| size | models | policy | threads | req/s | p50 | CPU used | loop lag p99 / max |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['size']} | | {r['policy']} | | failed: {r['error']} | | | |")
            continue
        print(
            f"| {r['size']} | {r['models']} | {r['policy']} | {r['threads']} | {r['req_s']:.2f} | {r['p50_ms']:.0f} ms "
            f"| {r['cpu_used']:.0%} | {r['loop_lag_p99_ms']:.1f} / {r['loop_lag_max_ms']:.1f} ms |"
        )


if __name__ == "__main__":
    main()
