"""Background jobs: long requests answered 202 at once, then polled for progress and result.

A job is a coroutine run as an asyncio task. The store bounds everything it holds: jobs
running at once, jobs waiting to run (beyond both: 429 with Retry-After), how long a
finished job is kept (TTL) and the bytes of results kept (oldest finished jobs go first).
Ids are random 128-bit tokens: knowing one is what grants access to a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from server.engine.serving import Call, InferenceService
from server.errors import ErrorCode, ServeError
from server.limits import JobLimits
from server.settings import ModelSpec

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class JobResult:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Progress:
    done: int = 0
    total: int = 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total


@dataclass(eq=False)
class Job:
    id: str
    kind: str
    created_at: float  # time.time()
    status: JobStatus = JobStatus.QUEUED
    progress: Progress = field(default_factory=Progress)
    result: JobResult | None = None
    error: ServeError | None = None
    finished: float | None = None  # store clock
    task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)


Work = Callable[[Progress], Awaitable[JobResult]]
ModelWork = Callable[[Call, Progress], Awaitable[JobResult]]


class JobStore:
    def __init__(self, limits: JobLimits | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or JobLimits()
        self.clock = clock
        self._jobs: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(self.limits.max_running)
        self._stored_bytes = 0
        self._job_s = 0.0  # moving average of a job's run time, for Retry-After

    @property
    def stored_bytes(self) -> int:
        return self._stored_bytes

    def check_capacity(self) -> None:
        """Raise 429 (with Retry-After) when no further job would be accepted now."""
        self._expire()
        active = sum(job.active for job in self._jobs.values())
        if active >= self.limits.max_running + self.limits.max_queued:
            waiting = active - self.limits.max_running + 1
            retry = max(1.0, self._job_s * waiting / self.limits.max_running)
            raise ServeError(
                ErrorCode.OVERLOADED,
                f"{active} jobs are running or queued; at most "
                f"{self.limits.max_running + self.limits.max_queued} are accepted",
                retry_after=retry,
            )

    def submit_on(self, service: InferenceService, spec: ModelSpec, kind: str, run: ModelWork, *, total: int) -> Job:
        """A job that runs `run` on model `spec` (loaded first if needed), each of its units of work given
        `unit_timeout_s` to run; no client watches it (cancel it with `cancel`)."""
        timeout_s = self.limits.unit_timeout_s

        async def work(progress: Progress) -> JobResult:
            async with service.open(spec, deadline=time.monotonic() + timeout_s, unit_timeout_s=timeout_s) as call:
                return await run(call, progress)

        return self.submit(kind, work, total=total)

    def submit(self, kind: str, work: Work, *, total: int = 0) -> Job:
        """Accept a job of `total` units of work (429 when full); it starts when a running slot frees."""
        self.check_capacity()
        job = Job(id=secrets.token_urlsafe(16), kind=kind, created_at=time.time(), progress=Progress(0, total))
        self._jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job, work), name=f"job-{kind}")
        return job

    def get(self, job_id: str) -> Job:
        self._expire()
        job = self._jobs.get(job_id)
        if job is None:
            raise ServeError(ErrorCode.NOT_FOUND, f"no job {job_id!r} (unknown, cancelled, or its result expired)")
        return job

    async def cancel(self, job_id: str) -> None:
        """Stop a job (its queued units are dropped) and forget it."""
        job = self.get(job_id)
        self._forget(job)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task

    async def close(self) -> None:
        """Cancel every job (at shutdown)."""
        tasks = [job.task for job in self._jobs.values() if job.task is not None and not job.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._jobs.clear()
        self._stored_bytes = 0

    async def _run(self, job: Job, work: Work) -> None:
        try:
            async with self._slots:
                job.status = JobStatus.RUNNING
                started = self.clock()
                result = await work(job.progress)
                elapsed = self.clock() - started
                self._job_s = 0.8 * self._job_s + 0.2 * elapsed if self._job_s else elapsed
            self._store(job, result)
        except asyncio.CancelledError:
            job.status, job.error = JobStatus.FAILED, ServeError(ErrorCode.CLIENT_CLOSED, "job cancelled")
            raise
        except ServeError as exc:
            job.status, job.error = JobStatus.FAILED, exc
        except Exception:
            log.exception("job %s (%s) failed", job.id, job.kind)
            job.status, job.error = JobStatus.FAILED, ServeError(ErrorCode.INTERNAL, "job failed")
        finally:
            job.finished = self.clock()

    def _store(self, job: Job, result: JobResult) -> None:
        size = len(result.body)
        if size > self.limits.max_result_bytes:
            raise ServeError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the result is {size} bytes; at most {self.limits.max_result_bytes} can be kept",
            )
        done = sorted((j for j in self._jobs.values() if j.result is not None), key=lambda j: j.finished or 0.0)
        while self._stored_bytes + size > self.limits.max_result_bytes and done:
            oldest = done.pop(0)
            log.info(
                "job %s: result dropped early to stay within %d result bytes", oldest.id, self.limits.max_result_bytes
            )
            self._forget(oldest)
        if job.id not in self._jobs:  # cancelled meanwhile
            return
        job.result, job.status = result, JobStatus.DONE
        job.progress.done = max(job.progress.done, job.progress.total)
        self._stored_bytes += size

    def _forget(self, job: Job) -> None:
        if self._jobs.pop(job.id, None) is not None and job.result is not None:
            self._stored_bytes -= len(job.result.body)

    def _expire(self) -> None:
        now = self.clock()
        expired = [
            j for j in self._jobs.values() if j.finished is not None and now - j.finished > self.limits.result_ttl_s
        ]
        for job in expired:
            self._forget(job)
