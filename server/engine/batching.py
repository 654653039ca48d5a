"""Dynamic batching: a bounded queue per model, drained in shape-compatible batches on one worker thread.

Lifecycle of a request: enqueue -> wait (<= max_delay after the oldest queued request of its group,
or until the group fills max_batch_size) -> drop if expired or abandoned -> collate -> forward ->
split, on the thread that owns the model. The task's runner supplies the four (`server.tasks.TaskRunner`).

Batching must never cost throughput, and neither must threads: per group key and batch size, the batcher keeps
the seconds per item of each way to run a batch (one pass or item by item; on every core, half or one, for CPU
models) and runs the cheapest (`Pays`). A small model's ops are too short to share among cores (waking the other
threads costs more than they save, and the event loop needs a core); a large one's matmuls use every core.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from server.engine.metrics import Metrics
from server.engine.plans import Pays, Plan
from server.errors import ErrorCode, ServeError
from server.observability import logs
from server.observability.tracing import Tracing
from server.tasks import TaskRunner

log = logging.getLogger(__name__)

# Out of memory on any device (torch.cuda.OutOfMemoryError is an alias on recent torch), or of host RAM.
OUT_OF_MEMORY: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    torch.cuda.OutOfMemoryError,
    MemoryError,
)


@dataclass(frozen=True)
class Outcome:
    result: Any
    queue_s: float
    inference_s: float  # of the forward pass the item ran in (with its batch-mates)
    batch_size: int
    batch: int = 0  # which forward pass of its batcher: items of one pass share it


@dataclass(eq=False)
class Pending:
    item: Any
    key: Hashable
    deadline: float  # time.monotonic()
    future: asyncio.Future[Outcome]
    enqueued: float = field(default_factory=time.monotonic)
    request_id: str = ""  # of the request it belongs to (for the log)
    trace: Any = None  # the span context of the request it belongs to, when traced


class Batcher:
    # Thread counts are tried at most once in this many passes of the model, whatever the shape: each new shape
    # and size would otherwise pay for its own slow try, while the count found fastest elsewhere (where new
    # shapes start) is almost always right for it too.
    THREAD_TRY_EVERY = 16

    def __init__(
        self,
        *,
        name: str,
        runner: TaskRunner,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        threads: Sequence[int] = (),
    ) -> None:
        """`threads`: the intra-op thread counts the worker thread may run a pass on (CPU models; the first is the
        default, the others are tried and kept where faster: `Pays`); empty leaves torch's threads as they are."""
        self.name, self.runner, self.metrics = name, runner, metrics
        self._thread_options = tuple(dict.fromkeys(threads)) or (0,)
        self._threads = 0  # the worker thread's intra-op threads, once set
        self._threads_hint = self._thread_options[0]  # where a new shape starts: the count last found fastest
        self._passes = 0
        self._thread_tried = -self.THREAD_TRY_EVERY  # the pass that last tried a thread count not the fastest
        # (key, threads) -> the smallest batch size at which that many threads ran slower than more: not tried on
        # bigger batches of the key, whose larger ops only gain more from threads (a large model's slow tries);
        # that size keeps re-trying them now and then, and lifts the verdict if they win there.
        self._fewer_lose: dict[tuple[Hashable, int], int] = {}
        self.tracing = tracing or Tracing()
        self.max_batch_size, self.max_delay_s, self.max_queue = max_batch_size, max_delay_s, max_queue
        self._groups: dict[Hashable, deque[Pending]] = {}
        self._depth = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._batch_s = 0.01  # moving average of a batch's run time, for Retry-After
        self._running_since: float | None = None
        self._finished_at = time.monotonic()  # when the collector last finished a batch
        self._batches = itertools.count(1)
        self._pays: dict[Hashable, Pays] = {}  # per (group key, batch size): the plan that pays (worker thread only)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batcher-{name}")
        # A context of its own: not that of the request whose arrival happened to load the model.
        self._task = asyncio.get_running_loop().create_task(
            self._collect(), name=f"batcher-{name}", context=contextvars.Context()
        )

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def stalled_for(self) -> float:
        """Seconds without progress (0 when idle or moving): the liveness signal. Either the batch on the worker
        thread has run this long, or requests have waited this long past `max_delay` for a collector that
        should have taken them (a dead or wedged collector)."""
        now = time.monotonic()
        if self._running_since is not None:
            return now - self._running_since
        waiting = [g[0].enqueued for g in self._groups.values() if g]
        if not waiting:
            return 0.0
        return max(0.0, now - max(min(waiting), self._finished_at) - self.max_delay_s)

    def enqueue(self, item: Any, *, deadline: float) -> Pending:
        if self._closing:
            raise ServeError(ErrorCode.MODEL_UNAVAILABLE, f"model {self.name!r} is unloading", retry_after=1)
        if self._depth >= self.max_queue:
            wait = self._depth / self.max_batch_size * self._batch_s
            raise ServeError(
                ErrorCode.OVERLOADED,
                f"model {self.name!r} queue is full ({self.max_queue} waiting)",
                retry_after=max(1.0, wait),
            )
        request = logs.current()
        pending = Pending(
            item,
            self.runner.key(item),
            deadline,
            asyncio.get_running_loop().create_future(),
            request_id=request.request_id if request else "",
            trace=self.tracing.current(),
        )
        self._groups.setdefault(pending.key, deque()).append(pending)
        self._set_depth(+1)
        self._wakeup.set()
        return pending

    def abandon(self, pending: Pending, reason: str | None) -> None:
        """Drop a request whose caller gave up if it is still queued; `reason` (expired, disconnected) is counted."""
        group = self._groups.get(pending.key)
        if group is not None and pending in group:
            group.remove(pending)
            self._set_depth(-1)
            if reason:
                self._count_drop(reason)
        if not pending.future.done():
            pending.future.cancel()
        elif not pending.future.cancelled():
            pending.future.exception()  # retrieved: the caller is already reporting another item's failure

    async def close(self, *, timeout_s: float | None = None) -> None:
        """Stop taking requests, finish the queued ones (for at most `timeout_s`), release the worker thread."""
        self._closing = True
        self._wakeup.set()
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                log.warning("batcher %s: queued work not finished after %.0fs; abandoning it", self.name, timeout_s)
                self._task.cancel()
        unfinished = [p for group in self._groups.values() for p in group if not p.future.done()]
        for pending in unfinished:  # left by a collector that died or was abandoned
            pending.future.set_exception(
                ServeError(
                    ErrorCode.MODEL_UNAVAILABLE,
                    f"model {self.name!r} was unloaded before this request ran",
                    retry_after=1,
                )
            )
        self._groups.clear()
        self._set_depth(-self._depth)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _set_depth(self, delta: int) -> None:
        self._depth += delta
        if self.metrics:
            self.metrics.queue_depth.labels(model=self.name).set(self._depth)

    def _count_drop(self, reason: str) -> None:
        if self.metrics:
            self.metrics.dropped.labels(model=self.name, reason=reason).inc()

    async def _collect(self) -> None:
        while True:
            if self._depth == 0:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[Pending] = []
            try:
                batch = await self._next_batch()
                if batch:
                    await self._run(batch)
            except Exception:  # never let the collector die; fail this batch only
                log.exception("batcher %s: batch failed", self.name)
                failed = ServeError(ErrorCode.INTERNAL, f"model {self.name!r}: inference failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(failed)
            finally:
                self._finished_at = time.monotonic()

    async def _next_batch(self) -> list[Pending]:
        key = min((k for k, g in self._groups.items() if g), key=lambda k: self._groups[k][0].enqueued)
        group = self._groups[key]
        due = group[0].enqueued + self.max_delay_s
        while group and len(group) < self.max_batch_size and not self._closing:
            remaining = due - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        taken = [group.popleft() for _ in range(min(len(group), self.max_batch_size))]
        if not group:
            del self._groups[key]
        self._set_depth(-len(taken))
        now, batch = time.monotonic(), []
        for p in taken:
            if p.future.done():  # abandoned while queued
                self._count_drop("disconnected")
            elif now >= p.deadline:
                self._count_drop("expired")
                p.future.set_exception(ServeError(ErrorCode.TIMEOUT, "request timed out in the queue"))
            else:
                batch.append(p)
        return batch

    async def _run(self, batch: list[Pending]) -> None:
        started, number = time.monotonic(), next(self._batches)
        loop = asyncio.get_running_loop()
        self._running_since = started
        try:
            results, size = await loop.run_in_executor(
                self._executor, self._execute, batch[0].key, [p.item for p in batch], [p.request_id for p in batch]
            )
        finally:
            self._running_since = None
        elapsed = time.monotonic() - started
        if self.metrics:
            for p in batch:
                self.metrics.queue_wait.labels(model=self.name).observe(started - p.enqueued)
            for _ in range(len(batch) // size):  # each forward pass, as it ran
                self.metrics.batch_size.labels(model=self.name).observe(size)
        if self.tracing.enabled:
            try:
                self.tracing.record_batch(
                    [(p.trace, p.enqueued) for p in batch],
                    started=started,
                    finished=started + elapsed,
                    attributes={"perceiver.model": self.name, "perceiver.batch_size": size},
                )
            except Exception:  # a span lost, never the answers
                log.exception("batcher %s: recording the batch's spans failed", self.name)
        self._batch_s = 0.8 * self._batch_s + 0.2 * elapsed
        if self.metrics:
            self.metrics.observe_batch(self.name, elapsed)
        for p, result in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(Outcome(result, started - p.enqueued, elapsed, size, number))

    def _execute(self, key: Hashable, items: list[Any], request_ids: list[str]) -> tuple[list[Any], int]:
        """The items' results, and the size of the forward passes they ran in: the batch's, or 1 when batching
        does not pay for this key (`Pays`)."""
        if len(self._pays) > 4096:  # keys are shapes and length buckets; bounded all the same
            self._pays.clear()
            self._fewer_lose.clear()
        # Timed per shape and batch size (to a power of two): per-item costs are only comparable at one size, and a
        # slower plan builds bigger batches, whose lower per-item cost must not be credited to it.
        size = 1 << (len(items) - 1).bit_length()
        pays = self._pays.setdefault((key, size), Pays())
        ways = (False, True) if len(items) > 1 else (True,)
        options = [n for n in self._thread_options if self._fewer_lose.get((key, n), size) >= size]
        options.sort(key=lambda n: n != self._threads_hint)
        plans = [Plan(alone, threads) for threads in options or self._thread_options[:1] for alone in ways]
        self._passes += 1
        plan = pays.choose(plans, try_threads=self._passes - self._thread_tried >= self.THREAD_TRY_EVERY)
        if plan.threads != pays.best(plans).threads:
            self._thread_tried = self._passes
        if plan.threads and plan.threads != self._threads:
            torch.set_num_threads(plan.threads)  # this thread's OpenMP team (and the default of threads to come)
            self._threads = plan.threads
        started = time.perf_counter()
        with torch.inference_mode():
            if plan.alone:
                results = [r for item, rid in zip(items, request_ids, strict=True) for r in self._bisect([item], [rid])]
            else:
                results = self._bisect(items, request_ids)
        pays.record(plan, per_item_s=(time.perf_counter() - started) / len(items))
        self._learn_threads(key, size, pays, plans)
        return results, 1 if plan.alone else len(items)

    def _learn_threads(self, key: Hashable, size: int, pays: Pays, plans: list[Plan]) -> None:
        """What a batch size that has compared thread counts says of the others: where new shapes start, and
        which counts bigger batches of this key need not try."""
        timed = {p.threads for p in pays.seconds}
        if len(timed) < 2:
            return
        best = pays.best(plans).threads
        self._threads_hint = best
        for threads in timed:
            if threads < best:
                self._fewer_lose[key, threads] = min(size, self._fewer_lose.get((key, threads), size))
        if self._fewer_lose.get((key, best), size + 1) <= size:  # faster now where it lost: things changed
            self._fewer_lose.pop((key, best), None)

    def _bisect(self, items: list[Any], request_ids: list[str]) -> list[Any]:
        """Run a batch; on failure (out of memory included) retry its halves so only the culprit fails."""
        about = {"model": self.name, "request_ids": sorted(set(request_ids)), "batch_size": len(items)}
        try:
            return self.runner.split(self.runner.forward(self.runner.collate(items)), items)
        except ServeError as exc:
            if len(items) == 1:
                return [exc]
        except OUT_OF_MEMORY:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(items) == 1:
                log.warning("batcher %s: out of memory on a single request", self.name, extra=about)
                alone = "ran out of memory on this request alone; send a smaller input or retry later"
                return [ServeError(ErrorCode.OUT_OF_MEMORY, f"model {self.name!r} {alone}", retry_after=5)]
            log.warning("batcher %s: out of memory at batch size %d, splitting", self.name, len(items), extra=about)
        except Exception as exc:
            if len(items) == 1:
                log.exception("batcher %s: inference failed", self.name, extra=about)
                alone = f"failed on this request ({type(exc).__name__}); the server log has the details"
                return [ServeError(ErrorCode.INTERNAL, f"model {self.name!r} {alone}")]
        half = len(items) // 2
        return self._bisect(items[:half], request_ids[:half]) + self._bisect(items[half:], request_ids[half:])
