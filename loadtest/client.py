"""A closed-loop load generator: N workers, each sending its next request as soon as the last one answers.

Bounded twice per step: at most `max_requests` sent and at most `duration_s` of sending; requests
in flight at the time limit are awaited (each bounded by the client timeout) and counted.
Each worker has its own client and connection: one httpx pool shared by 64 workers costs the
load generator ~5x the CPU per request (the pool is scanned per request) and inflates tail latency.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from loadtest.payloads import Payload

TRANSPORT_ERROR = 0  # status recorded for a request that got no HTTP answer (refused, reset, timed out)


@dataclass
class StepResult:
    route: str
    concurrency: int
    elapsed_s: float
    latencies_s: list[float] = field(default_factory=list)  # 2xx answers only
    statuses: Counter[int] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)  # X-Batch-Size of 2xx answers
    errors: Counter[str] = field(default_factory=Counter)  # first line of non-2xx error messages

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    @property
    def overloaded(self) -> int:
        return self.statuses.get(429, 0)

    @property
    def other_errors(self) -> int:
        return self.requests - self.ok - self.overloaded

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")


async def run_step(
    clients: Sequence[httpx.AsyncClient],
    route: str,
    payloads: Sequence[Payload],
    *,
    concurrency: int,
    max_requests: int,
    duration_s: float,
) -> StepResult:
    """Send `payloads` (cycled) to `route` from `concurrency` closed-loop workers; worker i uses
    clients[i % len(clients)]."""
    source = itertools.cycle(payloads)
    budget = itertools.count()
    started = time.monotonic()
    stop_at = started + duration_s
    result = StepResult(route, concurrency, 0.0)

    async def worker(client: httpx.AsyncClient) -> None:
        while next(budget) < max_requests and time.monotonic() < stop_at:
            payload = next(source)
            t0 = time.perf_counter()
            try:
                response = await client.post(payload.route, **payload.httpx_kwargs())
            except httpx.HTTPError as exc:
                result.statuses[TRANSPORT_ERROR] += 1
                result.errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
                continue
            latency = time.perf_counter() - t0
            result.statuses[response.status_code] += 1
            if response.is_success:
                result.latencies_s.append(latency)
                if size := response.headers.get("x-batch-size"):
                    result.batch_sizes[int(size)] += 1
            else:
                result.errors[f"{response.status_code}: {_error_message(response)}"[:200]] += 1

    await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    result.elapsed_s = time.monotonic() - started
    return result


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:120]


@asynccontextmanager
async def open_clients(
    base: str, *, count: int, timeout_s: float, headers: dict[str, str] | None = None
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """`count` clients of one kept-alive connection each (one per worker), closed on exit."""
    tls = ssl.create_default_context()  # built once: each client would otherwise load the CA bundle
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=base, limits=limits, timeout=timeout_s, trust_env=False, verify=tls, headers=headers
                )
            )
            for _ in range(count)
        ]


@dataclass(frozen=True)
class BatchStats:
    """perceiver_batch_size histogram totals for one model: executed batches and the requests in them."""

    batches: float = 0.0
    items: float = 0.0

    def __sub__(self, other: BatchStats) -> BatchStats:
        return BatchStats(self.batches - other.batches, self.items - other.items)

    @property
    def mean(self) -> float:
        return self.items / self.batches if self.batches else float("nan")


async def scrape_batches(client: httpx.AsyncClient) -> dict[str, BatchStats]:
    """Per model, from GET /metrics."""
    response = await client.get("/metrics")
    response.raise_for_status()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != "perceiver_batch_size":
            continue
        for s in family.samples:
            model = s.labels.get("model", "")
            if s.name.endswith("_sum"):
                sums[model] = s.value
            elif s.name.endswith("_count"):
                counts[model] = s.value
    return {m: BatchStats(counts.get(m, 0.0), sums.get(m, 0.0)) for m in set(sums) | set(counts)}
