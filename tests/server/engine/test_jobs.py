"""Background jobs: the store's bounds, and the /jobs resource over POST /autoencode-video?async=true."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from server.app import build_app
from server.engine.jobs import JobResult, JobStatus, JobStore, Progress
from server.errors import ErrorCode, ServeError
from server.limits import JobLimits
from server.settings import Settings
from tests.server.support import open_client
from tests.server.tasks.test_video_autoencoding import ONE_CHUNK_PER_PASS, clip, parts, settings_for, slow_loader

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def work_until(release: asyncio.Event, body: bytes = b"result", steps: int = 3) -> Callable[[Progress], Any]:
    async def work(progress: Progress) -> JobResult:
        for done in range(steps):
            progress.update(done, steps)
            await release.wait()
        progress.update(steps, steps)
        return JobResult(body, "application/octet-stream", {"X-Test": "1"})

    return work


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# ------------------------------------------------------------------------------------ the store


async def test_a_job_runs_reports_progress_and_keeps_its_result() -> None:
    store, release = JobStore(), asyncio.Event()
    job = store.submit("test", work_until(release), total=3)
    assert (job.status, job.progress.total) == (JobStatus.QUEUED, 3)
    await settle()
    assert store.get(job.id).status is JobStatus.RUNNING
    release.set()
    await job.task
    assert job.status is JobStatus.DONE and job.result is not None and job.result.body == b"result"
    assert (job.progress.done, job.progress.total) == (3, 3)
    assert store.stored_bytes == len(b"result")


async def test_ids_are_long_random_tokens() -> None:
    store = JobStore(JobLimits(max_running=1, max_queued=100))
    ids = {store.submit("test", work_until(asyncio.Event())).id for _ in range(50)}
    assert len(ids) == 50 and all(len(i) >= 22 for i in ids)
    await store.close()


async def test_beyond_running_and_queued_jobs_the_store_answers_429() -> None:
    store, release = JobStore(JobLimits(max_running=1, max_queued=1)), asyncio.Event()
    first, second = store.submit("test", work_until(release)), store.submit("test", work_until(release))
    await settle()
    assert (first.status, second.status) == (JobStatus.RUNNING, JobStatus.QUEUED)
    with pytest.raises(ServeError) as info:
        store.submit("test", work_until(release))
    assert info.value.code is ErrorCode.OVERLOADED and info.value.retry_after >= 1
    release.set()
    await asyncio.gather(first.task, second.task)
    store.submit("test", work_until(release))  # finished jobs do not count


async def test_finished_jobs_expire_after_the_ttl() -> None:
    clock = Clock()
    store = JobStore(JobLimits(result_ttl_s=60), clock=clock)
    release = asyncio.Event()
    release.set()
    job = store.submit("test", work_until(release))
    await job.task
    clock.now += 59
    assert store.get(job.id) is job
    clock.now += 2
    with pytest.raises(ServeError) as info:
        store.get(job.id)
    assert info.value.code is ErrorCode.NOT_FOUND and store.stored_bytes == 0


async def test_stored_results_are_bounded_oldest_dropped_first() -> None:
    clock, release = Clock(), asyncio.Event()
    release.set()
    store = JobStore(JobLimits(max_result_bytes=250), clock=clock)
    jobs = []
    for size in (100, 100, 100):
        clock.now += 1
        job = store.submit("test", work_until(release, b"x" * size))
        await job.task
        jobs.append(job)
    assert store.stored_bytes == 200
    with pytest.raises(ServeError):
        store.get(jobs[0].id)
    assert store.get(jobs[1].id).status is store.get(jobs[2].id).status is JobStatus.DONE
    too_big = store.submit("test", work_until(release, b"x" * 251))
    await too_big.task
    assert too_big.status is JobStatus.FAILED and too_big.error.code is ErrorCode.PAYLOAD_TOO_LARGE


async def test_failures_are_reported_without_internals() -> None:
    store = JobStore()

    async def refused(_progress: Progress) -> JobResult:
        raise ServeError(ErrorCode.INVALID_INPUT, "bad clip")

    async def broken(_progress: Progress) -> JobResult:
        raise RuntimeError("secret internal detail")

    first, second = store.submit("test", refused), store.submit("test", broken)
    await asyncio.gather(first.task, second.task)
    assert (first.status, first.error.code, first.error.message) == (
        JobStatus.FAILED,
        ErrorCode.INVALID_INPUT,
        "bad clip",
    )
    assert second.error.code is ErrorCode.INTERNAL and "secret" not in second.error.message


async def test_cancel_stops_running_and_queued_jobs() -> None:
    store, release = JobStore(JobLimits(max_running=1)), asyncio.Event()
    running, queued = store.submit("test", work_until(release)), store.submit("test", work_until(release))
    await settle()
    await store.cancel(running.id)
    await store.cancel(queued.id)
    assert running.task.cancelled() and queued.task.cancelled()
    for job in (running, queued):
        with pytest.raises(ServeError):
            store.get(job.id)
    with pytest.raises(ServeError) as info:
        await store.cancel("no-such-job")
    assert info.value.code is ErrorCode.NOT_FOUND


# ------------------------------------------------------------------------------------ over HTTP


async def test_the_job_resource(make_settings: Callable[..., Settings], checkpoints) -> None:
    app = build_app(
        settings_for(make_settings, checkpoints["video"], server=ONE_CHUNK_PER_PASS),  # 16 passes a window
        loader=slow_loader(0.02),
    )
    frames, audio = clip(4, seed=11)
    async with open_client(app) as client:
        accepted = await client.post(
            "/autoencode-video?outputs=labels,reconstruction&async=true", files=parts(frames, audio)
        )
        assert accepted.status_code == 202, accepted.text
        location = accepted.headers["location"]
        assert location == f"/jobs/{accepted.json()['id']}" and accepted.headers["retry-after"]
        assert accepted.json()["progress"] == {"done": 0, "total": 2 * 17}
        seen = []
        while (info := (await client.get(location)).json())["status"] != "done":
            assert info["status"] in ("queued", "running"), info
            seen.append(info["progress"]["done"])
            if info["status"] == "running":
                pending = await client.get(f"{location}/result")
                assert pending.status_code in (200, 202)
            await asyncio.sleep(0.03)
        assert seen == sorted(seen) and any(0 < s < 34 for s in seen)
        assert info["progress"] == {"done": 34, "total": 34} and info["result"] == f"{location}/result"
        result = await client.get(f"{location}/result")
        direct = await client.post("/autoencode-video?outputs=labels,reconstruction", files=parts(frames, audio))
        assert result.status_code == 200 and result.headers["content-type"] == "application/x-npz"
        with np.load(io.BytesIO(result.content)) as got, np.load(io.BytesIO(direct.content)) as want:
            assert sorted(got.files) == sorted(want.files)
            assert all(np.array_equal(got[k], want[k]) for k in want.files)
        assert (await client.delete(location)).status_code == 204
        assert (await client.get(location)).status_code == 404


async def test_prefer_respond_async_also_makes_a_job(make_settings, checkpoints) -> None:
    async with open_client(build_app(settings_for(make_settings, checkpoints["video"]))) as client:
        accepted = await client.post(
            "/autoencode-video", files=parts(*clip(2)), headers={"Prefer": "respond-async, wait=0"}
        )
        assert accepted.status_code == 202 and accepted.headers["preference-applied"] == "respond-async"
        location = accepted.headers["location"]
        while (await client.get(location)).json()["status"] != "done":
            await asyncio.sleep(0.02)
        result = await client.get(f"{location}/result")
    assert result.status_code == 200 and len(result.json()["windows"]) == 1


async def test_cancelling_a_job_stops_its_model_work(make_settings, checkpoints) -> None:
    app = build_app(
        settings_for(make_settings, checkpoints["video"], server=ONE_CHUNK_PER_PASS), loader=slow_loader(0.05)
    )
    async with open_client(app) as client:
        accepted = await client.post("/autoencode-video?outputs=reconstruction&async=true", files=parts(*clip(2)))
        location = accepted.headers["location"]
        while (await client.get(location)).json()["progress"]["done"] < 2:
            await asyncio.sleep(0.01)
        assert (await client.delete(location)).status_code == 204
        assert (await client.get(location)).status_code == 404
        assert (await client.get(f"{location}/result")).status_code == 404
        runner = app.state.registry.entries["video"].model.runner
        ran = runner.slowed
        await asyncio.sleep(0.3)
        assert runner.slowed <= ran + 1 < 16  # at most the pass already running when it was cancelled


async def test_unknown_jobs_are_404(make_settings, checkpoints) -> None:
    async with open_client(build_app(settings_for(make_settings, checkpoints["video"]))) as client:
        for method, path in [("GET", "/jobs/nope"), ("GET", "/jobs/nope/result"), ("DELETE", "/jobs/nope")]:
            response = await client.request(method, path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_too_many_jobs_answer_429_before_the_clip_is_read(make_settings, checkpoints) -> None:
    server = {**ONE_CHUNK_PER_PASS, "max_running_jobs": 1, "max_queued_jobs": 1}
    app = build_app(settings_for(make_settings, checkpoints["video"], server=server), loader=slow_loader(0.05))
    async with open_client(app) as client:
        for _ in range(2):
            accepted = await client.post("/autoencode-video?outputs=reconstruction&async=true", files=parts(*clip(2)))
            assert accepted.status_code == 202
        refused = await client.post(
            "/autoencode-video?outputs=reconstruction&async=true", files={"video": ("v.npy", b"not even read")}
        )
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "overloaded"
        await app.state.jobs.close()


def job_events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str, str]]:
    """(message, job_id, kind, model) of each job event logged."""
    return [
        (r.getMessage(), r.job_id, r.kind, r.model)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "server.engine.jobs"
    ]


async def test_job_events_are_logged_with_the_job_kind_and_model(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="server.engine.jobs")
    store, release = JobStore(), asyncio.Event()
    release.set()
    done = store.submit("test", work_until(release, steps=2), total=2, model="m")

    async def broken(progress: Progress) -> JobResult:
        raise ServeError(ErrorCode.INVALID_INPUT, "bad clip")

    failed = store.submit("test", broken, total=1, model="m")
    await asyncio.gather(done.task, failed.task)
    held = asyncio.Event()
    stopped = store.submit("test", work_until(held), total=3, model="m")
    await settle()
    await store.cancel(stopped.id)
    events = job_events(caplog)
    assert all(kind == "test" and model == "m" for _, _, kind, model in events)
    assert [m for m, i, _, _ in events if i == done.id] == [
        f"job {done.id} submitted: test on m, 2 unit(s) of work",
        f"job {done.id} running",
        f"job {done.id}: 0/2",
        f"job {done.id}: 1/2",
        f"job {done.id}: 2/2",
        next(m for m, i, _, _ in events if i == done.id and "finished in" in m),
    ]
    assert any(i == failed.id and "failed after" in m and m.endswith(": bad clip") for m, i, _, _ in events)
    assert [m for m, i, _, _ in events if i == stopped.id][-1] == f"job {stopped.id} cancelled"
    failure = next(r for r in caplog.records if getattr(r, "job_id", "") == failed.id and "failed" in r.getMessage())
    assert failure.error_code == "invalid_input"  # type: ignore[attr-defined]
