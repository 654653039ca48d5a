"""The Redis job store against a real Redis (Debian's redis-server, started by the fixture): several stores in
one process stand for several replicas. Claims, heartbeats, fencing, hand-back at shutdown, the cluster-wide
limits and what an unreachable Redis does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from server.engine.jobs import JobRequest, JobResult, JobStatus, Progress
from server.engine.jobs.redis_link import PREFIX, connect
from server.engine.jobs.redis_store import RedisJobStore
from server.engine.metrics import Metrics
from server.errors import ErrorCode, ServeError
from server.limits import JobLimits
from server.settings import SettingsError
from tests.server.conftest import free_port, sample
from tests.server.redis_support import RedisServer, ensure_redis_server

pytestmark = pytest.mark.anyio
FAST = JobLimits(max_running=1, max_queued=1, heartbeat_s=1.0)


@dataclass
class Work:
    """A job kind that runs `steps` units, each waiting for `gate`; records which replica ran what."""

    steps: int = 3
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: list[tuple[str, str]] = field(default_factory=list)  # (replica, input)
    completed: list[tuple[str, str]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def on(self, replica: str):
        async def execute(request: JobRequest, progress: Progress) -> JobResult:
            name = request.inputs["video"].decode()
            self.started.append((replica, name))
            try:
                for done in range(self.steps):
                    progress.update(done, self.steps)
                    await self.gate.wait()
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                self.cancelled.append(replica)
                raise
            progress.update(self.steps, self.steps)
            self.completed.append((replica, name))
            size = int(request.params.get("size") or 0)
            return JobResult(b"x" * size or f"{name} by {replica}".encode(), "text/plain", {"X-Replica": replica})

        return execute


def job(name: str = "clip", *, size: int = 0, result_bytes: int = 100, inputs: int = 0) -> JobRequest:
    data = name.encode() + b" " * inputs
    return JobRequest("test", "video", {"size": size}, {"video": data}, total=3, result_bytes=result_bytes)


@asynccontextmanager
async def replicas(url: str, work: Work, *names: str, limits: JobLimits = FAST) -> AsyncIterator[list[RedisJobStore]]:
    stores = [
        RedisJobStore(limits, client=connect(url), execute=work.on(n), metrics=Metrics(), replica=n) for n in names
    ]
    for store in stores:
        store.start()
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def until(predicate, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def status(store: RedisJobStore, job_id: str) -> JobStatus:
    return (await store.find(job_id, owner=None)).status


async def crash(store: RedisJobStore) -> None:
    """As if its process died: its heartbeats and work stop at once, and it holds nothing it could hand back."""
    runner = store.runner
    tasks = [*runner._loops, *(r.task for r in runner._running.values())]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def counts(url: str) -> dict[str, int]:
    client = aioredis.from_url(url)
    raw = await client.hgetall(PREFIX + "counts")
    await client.aclose()
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_any_replica_answers_for_a_job_another_accepted(redis_url: str) -> None:
    work = Work()
    async with replicas(redis_url, work, "a", "b") as (a, b):
        accepted = await a.enqueue(job("one"), owner=None)
        assert (accepted.status, accepted.progress.total) == (JobStatus.QUEUED, 3)
        await until(lambda: _is(b, accepted.id, JobStatus.RUNNING))
        seen = []
        while (info := await b.find(accepted.id, owner=None)).status is JobStatus.RUNNING:
            seen.append(info.progress.done)
            if len(seen) == 5:
                work.gate.set()
            await asyncio.sleep(0.05)
        assert seen == sorted(seen) and info.progress.done == info.progress.total == 3
        for store in (a, b):
            done = await store.find(accepted.id, owner=None, with_result=True)
            assert done.status is JobStatus.DONE and done.result is not None
            runner = work.completed[0][0]
            assert (done.result.body, done.result.media_type) == (f"one by {runner}".encode(), "text/plain")
            assert done.result.headers == {"X-Replica": runner}
        assert len(work.started) == len(work.completed) == 1
        left = await counts(redis_url)
        assert left["input_bytes"] == 0 and left["result_bytes"] == len(done.result.body)
        assert left["queued:test"] == left["running:test"] == 0


async def _is(store: RedisJobStore, job_id: str, want: JobStatus) -> bool:
    return await status(store, job_id) is want


async def test_capacity_is_counted_across_replicas(redis_url: str) -> None:
    work = Work()
    async with replicas(redis_url, work, "a", "b") as (a, b):  # one running slot each, one queued in all
        first, second = await a.enqueue(job(), owner=None), await b.enqueue(job(), owner=None)
        await until(lambda: _both_running(a, first.id, second.id))
        queued = await a.enqueue(job(), owner=None)
        for store in (a, b):
            for refused in (store.admit(), store.enqueue(job(), owner=None)):
                with pytest.raises(ServeError) as info:
                    await refused
                assert info.value.code is ErrorCode.OVERLOADED and info.value.retry_after >= 1
                assert "3 jobs are running or queued; at most 3" in info.value.message
        assert await status(b, queued.id) is JobStatus.QUEUED
        work.gate.set()
        await until(lambda: _is(a, queued.id, JobStatus.DONE))
        await b.admit()
        assert {r for r, _ in work.completed} == {"a", "b"}


async def _both_running(store: RedisJobStore, *ids: str) -> bool:
    return all([await status(store, i) is JobStatus.RUNNING for i in ids])


async def test_a_job_whose_runner_stops_runs_again_elsewhere_and_completes_once(redis_url: str) -> None:
    work = Work()
    async with replicas(redis_url, work, "a") as (a,):
        accepted = await a.enqueue(job(), owner=None)
        await until(lambda: _started(work, 1))
        await crash(a)
        async with replicas(redis_url, work, "b") as (b,):
            await until(lambda: _started(work, 2))
            work.gate.set()
            await until(lambda: _is(b, accepted.id, JobStatus.DONE))
            assert work.started == [("a", "clip"), ("b", "clip")] and work.completed == [("b", "clip")]
            assert sample(b.metrics.render().decode(), "perceiver_jobs_claimed_total", kind="test") == 1


async def test_a_runner_that_lost_its_job_cannot_store_its_result(redis_url: str) -> None:
    """A runner cut off from Redis (here: its heartbeats stop, its work goes on) finishes after another replica
    took the job over: the fence refuses its result, and the job completes once, with the other's."""
    work = Work()
    async with replicas(redis_url, work, "a") as (a,):
        accepted = await a.enqueue(job(), owner=None)
        await until(lambda: _started(work, 1))
        a.runner._loops[0].cancel()  # the keeper: no more heartbeats
        async with replicas(redis_url, work, "b") as (b,):
            await until(lambda: _started(work, 2))
            work.gate.set()
            await until(lambda: _completed(work, 2))
            await until(lambda: _is(a, accepted.id, JobStatus.DONE))
            done = await a.find(accepted.id, owner=None, with_result=True)
            assert done.result is not None and done.result.headers == {"X-Replica": "b"}
            for store, stored in ((a, 0), (b, 1)):
                text = store.metrics.render().decode()
                assert sample(text, "perceiver_jobs_finished_total", kind="test", status="done") == stored


async def _completed(work: Work, count: int) -> bool:
    return len(work.completed) >= count


async def test_a_job_that_keeps_stopping_its_runners_fails_after_three_tries(redis_url: str) -> None:
    work, accepted = Work(), None
    for tries, name in enumerate(("a", "b", "c"), 1):
        async with replicas(redis_url, work, name) as (store,):
            accepted = accepted or await store.enqueue(job(), owner=None)
            await until(lambda: _started(work, tries))
            await crash(store)
    assert accepted is not None
    async with replicas(redis_url, work, "d") as (d,):
        await until(lambda: _is(d, accepted.id, JobStatus.FAILED))
        failed = await d.find(accepted.id, owner=None)
    assert failed.error is not None and "stopped 3 times" in failed.error.message
    assert [r for r, _ in work.started] == ["a", "b", "c"] and not work.completed


async def _started(work: Work, count: int) -> bool:
    return len(work.started) >= count


async def test_shutdown_hands_running_jobs_back_at_once(redis_url: str) -> None:
    work = Work()
    slow_heartbeat = JobLimits(max_running=1, max_queued=1, heartbeat_s=600)  # a claim cannot come from a timeout
    async with replicas(redis_url, work, "a", limits=slow_heartbeat) as (a,):
        accepted = await a.enqueue(job(), owner=None)
        await until(lambda: _started(work, 1))
        async with replicas(redis_url, work, "b", limits=slow_heartbeat) as (b,):
            await a.close()
            await until(lambda: _started(work, 2))
            work.gate.set()
            await until(lambda: _is(b, accepted.id, JobStatus.DONE))
    assert work.cancelled == ["a"] and work.completed == [("b", "clip")]


async def test_a_shutdown_at_any_moment_leaves_no_job_behind(redis_url: str) -> None:
    """Whether it comes before a claim, while one is on its way or once the work runs, a replica's shutdown
    hands its job over at once: the other replica (whose heartbeat timeout is far away) runs them all."""
    work, slow_heartbeat = Work(), JobLimits(max_running=1, max_queued=20, heartbeat_s=600)
    work.gate.set()
    async with replicas(redis_url, work, "b", limits=slow_heartbeat) as (b,):
        ids = []
        for step in range(10):
            async with replicas(redis_url, work, f"a{step}", limits=slow_heartbeat) as (a,):
                ids.append((await a.enqueue(job(f"job{step}"), owner=None)).id)
                await asyncio.sleep(step * 0.002)
        for job_id in ids:
            await until(lambda: _is(b, job_id, JobStatus.DONE))
    assert sorted(name for _, name in work.completed) == sorted(f"job{step}" for step in range(10))


async def test_cancel_from_another_replica_stops_the_work(redis_url: str) -> None:
    work = Work()
    async with replicas(redis_url, work, "a", "b") as (a, b):
        running = await a.enqueue(job("running"), owner=None)
        await until(lambda: _started(work, 1))
        runner = work.started[0][0]
        await (b if runner == "a" else a).cancel(running.id)
        await until(lambda: _cancelled(work))
        for store in (a, b):
            with pytest.raises(ServeError) as info:
                await store.find(running.id, owner=None)
            assert info.value.code is ErrorCode.NOT_FOUND
        assert work.cancelled == [runner] and (await counts(redis_url))["running:test"] == 0


async def _cancelled(work: Work) -> bool:
    return bool(work.cancelled)


async def test_results_are_bounded_oldest_first_and_expire(redis_url: str) -> None:
    work, limits = Work(), JobLimits(max_running=1, max_queued=4, heartbeat_s=1.0, max_result_bytes=250, result_ttl_s=2)
    work.gate.set()
    async with replicas(redis_url, work, "a", limits=limits) as (a,):
        ids = []
        for _ in range(3):
            ids.append((await a.enqueue(job(size=100), owner=None)).id)
            await until(lambda: _is(a, ids[-1], JobStatus.DONE))
        with pytest.raises(ServeError):
            await a.find(ids[0], owner=None)
        assert (await counts(redis_url))["result_bytes"] == 200
        too_big = await a.enqueue(job(size=251), owner=None)
        await until(lambda: _is(a, too_big.id, JobStatus.FAILED))
        failed = await a.find(too_big.id, owner=None)
        assert failed.error.code is ErrorCode.PAYLOAD_TOO_LARGE
        await until(lambda: _gone(a, *ids[1:], too_big.id), timeout_s=10)
        assert (await counts(redis_url))["result_bytes"] == 0


async def _gone(store: RedisJobStore, *ids: str) -> bool:
    for job_id in ids:
        try:
            await store.find(job_id, owner=None)
            return False
        except ServeError as exc:
            assert exc.code is ErrorCode.NOT_FOUND
    return True


async def test_results_and_inputs_that_cannot_be_kept_are_refused_at_submit(redis_url: str) -> None:
    limits = JobLimits(max_running=1, max_queued=8, heartbeat_s=1.0, max_result_bytes=1000, max_input_bytes=2000)
    async with replicas(redis_url, Work(), "a", limits=limits) as (a,):
        for request, needle in [
            (job(result_bytes=1001), "max_job_results_mb"),
            (job(inputs=2001), "max_job_inputs_mb"),
        ]:
            with pytest.raises(ServeError) as info:
                await a.enqueue(request, owner=None)
            assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE and needle in info.value.message
        await a.enqueue(job(inputs=1500), owner=None)
        with pytest.raises(ServeError) as info:
            await a.enqueue(job(inputs=1000), owner=None)  # fits alone, not with the first one's input held
        assert info.value.code is ErrorCode.OVERLOADED and "max_job_inputs_mb" in info.value.message


async def test_a_job_is_its_owners_alone(redis_url: str) -> None:
    async with replicas(redis_url, Work(), "a", "b") as (a, b):
        mine = await a.enqueue(job(), owner="digest-of-key-1")
        for store in (a, b):
            with pytest.raises(ServeError) as info:
                await store.find(mine.id, owner="digest-of-key-2")
            assert info.value.code is ErrorCode.NOT_FOUND
            with pytest.raises(ServeError):
                await store.find(mine.id, owner=None)
            with pytest.raises(ServeError):
                await store.cancel(mine.id, owner="digest-of-key-2")
        assert (await b.find(mine.id, owner="digest-of-key-1")).owner == "digest-of-key-1"
        await b.cancel(mine.id, owner="digest-of-key-1")


async def test_an_unreachable_redis_answers_503_and_says_so() -> None:
    store = RedisJobStore(FAST, client=connect(f"redis://127.0.0.1:{free_port()}/0"), execute=Work().on("a"))
    store.start()
    try:
        for call in (store.admit(), store.enqueue(job(), owner=None), store.find("x", owner=None), store.cancel("x")):
            with pytest.raises(ServeError) as info:
                await call
            assert info.value.code is ErrorCode.JOBS_UNAVAILABLE and info.value.status == 503
            assert "synchronous requests still work" in info.value.message and info.value.retry_after
        await until(lambda: _problem(store))
    finally:
        await store.close()


async def _problem(store: RedisJobStore) -> bool:
    return store.problem() is not None and "cannot be reached" in store.problem()


async def test_a_password_from_a_file(tmp_path) -> None:
    server = RedisServer(ensure_redis_server(), tmp_path / "redis", password="pa55-word-from-a-secret")
    server.start()
    secret = tmp_path / "password"
    secret.write_text("pa55-word-from-a-secret\n")
    url = f"redis://127.0.0.1:{server.port}/0"
    stores = [RedisJobStore(FAST, client=connect(url, password_file=p), execute=Work().on("a")) for p in (secret, None)]
    try:
        accepted = await stores[0].enqueue(job(), owner=None)
        assert (await stores[0].find(accepted.id, owner=None)).status is JobStatus.QUEUED
        with pytest.raises(ServeError) as info:  # no password: Redis refuses, the job routes say 503
            await stores[1].find(accepted.id, owner=None)
        assert info.value.code is ErrorCode.JOBS_UNAVAILABLE and "pa55" not in info.value.message
        with pytest.raises(SettingsError, match="jobs_password_file"):
            connect(url, password_file=tmp_path / "missing")
    finally:
        for store in stores:
            await store.close()
        server.stop()


async def test_job_events_are_logged_by_the_replicas_that_see_them(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="server.engine.jobs")
    work = Work()
    work.gate.set()
    async with replicas(redis_url, work, "a", "b") as (a, b):
        accepted = await a.enqueue(job("one"), owner=None)
        await until(lambda: _is(b, accepted.id, JobStatus.DONE))
        work.gate.clear()  # the next job waits: it is cancelled while queued or running
        cancelled = await a.enqueue(job("two"), owner=None)
        await b.cancel(cancelled.id)
    lines = [(r.getMessage(), r.kind, r.model) for r in caplog.records if getattr(r, "job_id", "") == accepted.id]
    assert lines[0] == (f"job {accepted.id} submitted: test on video, 3 unit(s) of work", "test", "video")
    assert (f"job {accepted.id} running", "test", "video") in lines
    assert any(m.startswith(f"job {accepted.id} finished in") for m, _, _ in lines)
    assert any(r.getMessage() == f"job {cancelled.id} cancelled" for r in caplog.records)
