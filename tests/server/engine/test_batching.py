"""The batcher with a deterministic toy task: items are (key, value); the 'model' doubles values."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from server.engine.batching import Batcher
from server.engine.metrics import Metrics
from server.engine.plans import Pays, Plan
from server.errors import ErrorCode, ServeError

pytestmark = pytest.mark.anyio


class Doubler:
    def __init__(
        self, *, oom_above: int | None = None, poison: int | None = None, gate: threading.Event | None = None
    ) -> None:
        self.batches: list[list[int]] = []
        self.oom_above, self.poison, self.gate = oom_above, poison, gate
        self.entered = threading.Event()

    def key(self, item: tuple[str, int]) -> str:
        return item[0]

    def collate(self, items: Sequence[tuple[str, int]]) -> torch.Tensor:
        return torch.tensor([v for _, v in items])

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=10)
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        if self.poison is not None and self.poison in batch.tolist():
            raise RuntimeError("poisoned input")
        self.batches.append(batch.tolist())
        return batch * 2

    def split(self, output: torch.Tensor, items: Sequence[Any]) -> list[int]:
        return output.tolist()


def make(
    fn: Doubler, *, size: int = 4, delay_s: float = 0.05, queue: int = 64, metrics: Metrics | None = None
) -> Batcher:
    return Batcher(name="toy", runner=fn, max_batch_size=size, max_delay_s=delay_s, max_queue=queue, metrics=metrics)


async def run(batcher: Batcher, items: list[tuple[str, int]], timeout_s: float = 5) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    pendings = [batcher.enqueue(item, deadline=deadline) for item in items]
    return [o.result for o in await asyncio.gather(*(p.future for p in pendings))]


async def test_batches_keep_order_and_respect_max_size() -> None:
    fn = Doubler()
    batcher = make(fn, size=4)
    assert await run(batcher, [("a", i) for i in range(10)]) == [2 * i for i in range(10)]
    assert [len(b) for b in fn.batches] == [4, 4, 2]
    await batcher.close()


async def test_groups_by_key() -> None:
    fn = Doubler()
    batcher = make(fn, size=8)
    items = [("short", 1), ("long", 2), ("short", 3), ("long", 4), ("short", 5)]
    assert await run(batcher, items) == [2, 4, 6, 8, 10]
    assert sorted(fn.batches) == [[1, 3, 5], [2, 4]]
    await batcher.close()


async def test_a_lone_request_waits_at_most_max_delay() -> None:
    fn = Doubler()
    batcher = make(fn, size=32, delay_s=0.05)
    started = time.monotonic()
    [outcome] = await asyncio.gather(batcher.enqueue(("a", 1), deadline=started + 5).future)
    assert outcome.result == 2 and outcome.batch_size == 1
    assert 0.04 <= time.monotonic() - started < 1.0
    assert outcome.queue_s >= 0.04
    await batcher.close()


async def test_full_queue_is_overloaded_with_retry_after() -> None:
    gate = threading.Event()
    fn = Doubler(gate=gate)
    batcher = make(fn, size=1, delay_s=0, queue=2)
    deadline = time.monotonic() + 10
    first = batcher.enqueue(("a", 0), deadline=deadline)
    await asyncio.to_thread(fn.entered.wait, 5)  # the first is in forward; the queue is empty again
    queued = [batcher.enqueue(("a", i), deadline=deadline) for i in (1, 2)]
    with pytest.raises(ServeError) as info:
        batcher.enqueue(("a", 3), deadline=deadline)
    assert info.value.code is ErrorCode.OVERLOADED and info.value.status == 429
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    gate.set()
    assert [(await p.future).result for p in (first, *queued)] == [0, 2, 4]
    await batcher.close()


async def test_expired_and_abandoned_requests_never_reach_the_model() -> None:
    gate, metrics = threading.Event(), Metrics()
    fn = Doubler(gate=gate)
    batcher = make(fn, size=8, delay_s=0, metrics=metrics)
    now = time.monotonic()
    blocker = batcher.enqueue(("a", 1), deadline=now + 10)
    await asyncio.to_thread(fn.entered.wait, 5)
    expiring = batcher.enqueue(("a", 2), deadline=now + 0.05)
    leaving = batcher.enqueue(("a", 3), deadline=now + 10)
    kept = batcher.enqueue(("a", 4), deadline=now + 10)
    batcher.abandon(leaving, "disconnected")
    await asyncio.sleep(0.1)
    gate.set()
    assert (await blocker.future).result == 2 and (await kept.future).result == 8
    with pytest.raises(ServeError) as info:
        await expiring.future
    assert info.value.code is ErrorCode.TIMEOUT
    assert fn.batches == [[1], [4]]
    dropped = metrics.dropped.labels
    assert dropped(model="toy", reason="expired")._value.get() == 1
    assert dropped(model="toy", reason="disconnected")._value.get() == 1
    await batcher.close()


async def test_cuda_oom_splits_the_batch() -> None:
    fn = Doubler(oom_above=2)
    batcher = make(fn, size=8, delay_s=0.05)
    assert await run(batcher, [("a", i) for i in range(7)]) == [2 * i for i in range(7)]
    assert all(len(b) <= 2 for b in fn.batches) and sum(map(len, fn.batches)) == 7
    await batcher.close()


async def test_oom_on_a_single_request_fails_only_that_request() -> None:
    fn = Doubler(oom_above=0)
    batcher = make(fn, size=4)
    with pytest.raises(ServeError) as info:
        await run(batcher, [("a", 1)])
    assert info.value.code is ErrorCode.OUT_OF_MEMORY
    await batcher.close()


async def test_a_failing_item_does_not_fail_its_batch_mates() -> None:
    fn = Doubler(poison=3)
    batcher = make(fn, size=8)
    deadline = time.monotonic() + 5
    pendings = [batcher.enqueue(("a", i), deadline=deadline) for i in range(6)]
    results = await asyncio.gather(*(p.future for p in pendings), return_exceptions=True)
    assert [r.result for i, r in enumerate(results) if i != 3] == [0, 2, 4, 8, 10]
    assert isinstance(results[3], ServeError) and results[3].code is ErrorCode.INTERNAL
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses() -> None:
    fn = Doubler()
    batcher = make(fn, size=2, delay_s=1.0)
    pendings = [batcher.enqueue(("a", i), deadline=time.monotonic() + 5) for i in range(3)]
    await batcher.close()
    assert [(await p.future).result for p in pendings] == [0, 2, 4]
    with pytest.raises(ServeError) as info:
        batcher.enqueue(("a", 9), deadline=time.monotonic() + 5)
    assert info.value.code is ErrorCode.MODEL_UNAVAILABLE


async def test_metrics_record_batches() -> None:
    metrics = Metrics()
    batcher = make(Doubler(), size=4, metrics=metrics)
    await run(batcher, [("a", i) for i in range(4)])
    text = metrics.render().decode()
    assert 'perceiver_batch_size_bucket{le="4.0",model="toy"} 1.0' in text
    assert 'perceiver_batch_size_bucket{le="2.0",model="toy"} 0.0' in text
    assert 'perceiver_queue_depth{model="toy"} 0.0' in text
    assert 'perceiver_inference_duration_seconds_count{model="toy"} 1.0' in text
    assert 'perceiver_queue_wait_seconds_count{model="toy"} 4.0' in text
    await batcher.close()


class Timed(Doubler):
    """A forward pass of n items sleeps fixed_s + per_item_s * n**power (power 2: batching costs more per item)."""

    def __init__(self, *, fixed_s: float, per_item_s: float, power: int) -> None:
        super().__init__()
        self.fixed_s, self.per_item_s, self.power = fixed_s, per_item_s, power

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(self.fixed_s + self.per_item_s * len(batch) ** self.power)
        return super().forward(batch)


async def batches_of_four(batcher: Batcher, count: int) -> list[int]:
    """`count` full batches, one after the other; the batch size each item reported."""
    sizes = []
    for i in range(count):
        deadline = time.monotonic() + 10
        pendings = [batcher.enqueue(("k", 4 * i + j), deadline=deadline) for j in range(4)]
        outcomes = await asyncio.gather(*(p.future for p in pendings))
        assert [o.result for o in outcomes] == [2 * (4 * i + j) for j in range(4)]
        sizes += [o.batch_size for o in outcomes]
    return sizes


async def test_batches_run_item_by_item_when_batching_costs_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Pays, "EXPLORE_AFTER", 2)
    slower = Timed(fixed_s=0.0, per_item_s=0.005, power=2)  # 4 items batched: 80 ms; alone: 4 x 5 ms
    batcher = make(slower, size=4, delay_s=0.2)
    sizes = await batches_of_four(batcher, 5)
    await batcher.close()
    assert [len(b) for b in slower.batches] == [4] + [1] * 16  # batched once, then tried alone and kept
    assert sizes == [4] * 4 + [1] * 16


async def test_batches_stay_batched_when_batching_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Pays, "EXPLORE_AFTER", 2)
    cheaper = Timed(fixed_s=0.02, per_item_s=0.001, power=1)  # 4 items batched: 24 ms; alone: 4 x 21 ms
    batcher = make(cheaper, size=4, delay_s=0.2)
    await batches_of_four(batcher, 5)
    await batcher.close()
    assert [len(b) for b in cheaper.batches] == [4] + [1] * 4 + [4] * 3  # tried alone once, back to batches


def test_pays_explores_the_other_way_now_and_then() -> None:
    batched, alone = Plan(alone=False), Plan(alone=True)
    pays = Pays(seconds={batched: 1.0, alone: 2.0})
    runs = [pays.choose([batched, alone]) for _ in range(2 * Pays.EXPLORE_EVERY)]
    assert runs.count(alone) == 2 and runs[Pays.EXPLORE_EVERY - 1] == alone  # batching pays: alone once in 64


def test_pays_walks_to_the_fastest_plan_one_change_at_a_time() -> None:
    plans = [Plan(False, 2), Plan(True, 2), Plan(False, 1), Plan(True, 1)]
    cost = {plans[0]: 4.0, plans[1]: 3.0, plans[2]: 1.0, plans[3]: 2.0}
    pays, runs = Pays(), []
    for _ in range(4 * Pays.EXPLORE_EVERY):
        plan = pays.choose(plans)
        pays.record(plan, per_item_s=cost[plan])
        runs.append(plan)
    assert runs[: Pays.EXPLORE_AFTER - 1] == [plans[0]] * (Pays.EXPLORE_AFTER - 1)  # the default until then
    # alone (faster), then alone on one thread (faster again), then batched on one thread: the fastest
    assert runs[Pays.EXPLORE_AFTER - 1 : Pays.EXPLORE_AFTER + 2] == [plans[1], plans[3], plans[2]]
    later = runs[Pays.EXPLORE_AFTER + 2 :]
    explored = [plan for plan in later if plan != plans[2]]
    assert explored == [plans[0], plans[3], plans[0], plans[3]]  # every 64th pass, its neighbours in turn


def test_pays_never_tries_the_far_corner_of_a_fast_default() -> None:
    """A large model: batched on every thread is fastest; item by item on one thread (the slowest by far) is two
    changes away and never run."""
    plans = [Plan(False, 2), Plan(True, 2), Plan(False, 1), Plan(True, 1)]
    cost = {plans[0]: 1.0, plans[1]: 1.2, plans[2]: 1.9, plans[3]: 2.2}
    pays = Pays()
    runs = []
    for _ in range(4 * Pays.EXPLORE_EVERY):
        runs.append(pays.choose(plans))
        pays.record(runs[-1], per_item_s=cost[runs[-1]])
    assert plans[3] not in runs and runs.count(plans[1]) == runs.count(plans[2]) == 3


class ThreadBound(Doubler):
    """A pass sleeps `seconds[threads]`, threads being the worker thread's intra-op threads as the pass runs."""

    def __init__(self, seconds: dict[int, float]) -> None:
        super().__init__()
        self.seconds, self.threads_seen = seconds, []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        self.threads_seen.append(threads)
        time.sleep(self.seconds[threads])
        return super().forward(batch)


def thread_bound(
    monkeypatch: pytest.MonkeyPatch, seconds: dict[int, float], *, size: int = 1, delay_s: float = 0.0
) -> tuple[ThreadBound, Batcher]:
    """A batcher that may run on 2 threads or 1, over a model whose passes take `seconds[threads]`."""
    monkeypatch.setattr(Pays, "EXPLORE_AFTER", 2)
    model = ThreadBound(seconds)
    batcher = Batcher(name="toy", runner=model, max_batch_size=size, max_delay_s=delay_s, max_queue=8, threads=(2, 1))
    return model, batcher


@pytest.mark.parametrize("faster", [1, 2])
async def test_passes_run_on_the_thread_count_measured_faster(monkeypatch: pytest.MonkeyPatch, faster: int) -> None:
    """A small model's passes run faster on one thread, a large one's on every core: the batcher keeps whichever
    it measured faster, for this shape; the event loop's own thread count is left alone."""
    loop_threads = torch.get_num_threads()
    model, batcher = thread_bound(monkeypatch, {faster: 0.002, 3 - faster: 0.03})
    for i in range(8):
        assert await run(batcher, [("k", i)]) == [2 * i]
    await batcher.close()
    assert model.threads_seen[:2] == [2, 1]  # the default (every core), then the other tried once
    assert model.threads_seen[2:] == [faster] * 6
    assert torch.get_num_threads() == loop_threads


async def test_a_new_shape_starts_on_the_thread_count_found_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    model, batcher = thread_bound(monkeypatch, {1: 0.002, 2: 0.03})
    for i in range(3):
        await run(batcher, [("short", i)])
    await run(batcher, [("long", 0)])
    await batcher.close()
    assert model.threads_seen == [2, 1, 1, 1]  # "long" never pays for the slow default "short" found


async def test_bigger_batches_skip_thread_counts_a_smaller_one_found_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large model: one thread loses on a single item, so batches of 4 never try it (it would lose by more)."""
    model, batcher = thread_bound(monkeypatch, {2: 0.002, 1: 0.02}, size=4, delay_s=0.2)
    for i in range(3):
        await run(batcher, [("k", i)])
    assert model.threads_seen == [2, 1, 2]
    await batches_of_four(batcher, 6)
    await batcher.close()
    assert set(model.threads_seen[3:]) == {2}  # batched, then alone once (on 2 threads), never on 1


async def test_thread_counts_are_tried_once_in_a_while_across_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many shapes, each new: the slow thread count is tried at most once every THREAD_TRY_EVERY passes."""
    model, batcher = thread_bound(monkeypatch, {2: 0.001, 1: 0.003})
    for i in range(48):
        await run(batcher, [(f"shape-{i % 12}", i)])
    await batcher.close()
    assert model.threads_seen.count(1) <= 48 // Batcher.THREAD_TRY_EVERY
    assert model.threads_seen.count(1) >= 1  # tried all the same


async def test_without_thread_options_the_threads_are_left_as_they_are() -> None:
    model = ThreadBound(dict.fromkeys(range(1, 1 + max(2, torch.get_num_threads())), 0.0))
    batcher = make(model)
    await run(batcher, [("k", 1)])
    await batcher.close()
    assert model.threads_seen == [torch.get_num_threads()]
