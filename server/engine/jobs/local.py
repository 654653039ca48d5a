"""The in-process job store (the default): jobs live in this process, as asyncio tasks.

The store bounds everything it holds: jobs running at once, jobs waiting to run (beyond both: 429 with
Retry-After), how long a finished job is kept (TTL) and the bytes of results kept (oldest finished jobs go first).
Ids are random 128-bit tokens; with API keys, a job is its submitter's alone. A restart loses every job, and
behind a load balancer a poll reaches another process: several replicas need the Redis store (redis_store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from server.engine.jobs import events
from server.engine.jobs.kinds import Execute
from server.engine.jobs.records import (
    Job,
    JobRequest,
    JobResult,
    JobStatus,
    Progress,
    check_request,
    overloaded,
    owns,
    result_too_large,
    unknown_job,
)
from server.engine.metrics import Metrics
from server.errors import ErrorCode, ServeError
from server.limits import JobLimits

log = logging.getLogger(__name__)

Work = Callable[[Progress], Awaitable[JobResult]]


class JobStore:
    def __init__(
        self,
        limits: JobLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        execute: Execute | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.limits = limits or JobLimits()
        self.clock = clock
        self.execute = execute
        self.metrics = metrics or Metrics()
        self._jobs: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(self.limits.max_running)
        self._stored_bytes = 0
        self._job_s = 0.0  # moving average of a job's run time, for Retry-After

    @property
    def stored_bytes(self) -> int:
        return self._stored_bytes

    # -- what the routes call (the same for the Redis store)

    def start(self) -> None:
        """Nothing runs in the background until a job is submitted."""

    def problem(self) -> str | None:
        """Why jobs cannot be accepted now (never, in process)."""
        return None

    async def admit(self) -> None:
        self.check_capacity()

    async def enqueue(self, request: JobRequest, *, owner: str | None) -> Job:
        """Accept a job description (429 when full, 413 when its result could not be kept); it runs when a
        running slot frees."""
        if self.execute is None:
            raise ServeError(ErrorCode.INTERNAL, "this job store runs no job descriptions")
        check_request(request, max_result_bytes=self.limits.max_result_bytes)
        work = functools.partial(self.execute, request)
        return self.submit(request.kind, work, total=request.total, owner=owner, model=request.model)

    async def find(self, job_id: str, *, owner: str | None, with_result: bool = False) -> Job:
        job = self.get(job_id)
        if not owns(job.owner, owner):
            raise unknown_job(job_id)
        return job

    # -- the store

    def check_capacity(self) -> None:
        """Raise 429 (with Retry-After) when no further job would be accepted now."""
        self._expire()
        active = sum(job.active for job in self._jobs.values())
        capacity = self.limits.max_running + self.limits.max_queued
        if active >= capacity:
            raise overloaded(active, capacity, job_s=self._job_s, slots=self.limits.max_running)

    def submit(self, kind: str, work: Work, *, total: int = 0, owner: str | None = None, model: str = "") -> Job:
        """Accept a job of `total` units of work (429 when full); it starts when a running slot frees."""
        self.check_capacity()
        job_id = secrets.token_urlsafe(16)
        progress = Progress(0, total, job=(job_id, kind, model))
        job = Job(id=job_id, kind=kind, created_at=time.time(), progress=progress, owner=owner, model=model)
        self._jobs[job.id] = job
        events.submitted(job.id, kind, model, total=total)
        self.metrics.jobs_queued.labels(kind=kind).inc()
        job.task = asyncio.get_running_loop().create_task(self._run(job, work), name=f"job-{kind}")
        return job

    def get(self, job_id: str) -> Job:
        self._expire()
        job = self._jobs.get(job_id)
        if job is None:
            raise unknown_job(job_id)
        return job

    async def cancel(self, job_id: str, *, owner: str | None = None) -> None:
        """Stop a job (its queued units are dropped) and forget it."""
        job = await self.find(job_id, owner=owner)
        self._forget(job)
        if job.active:
            self.metrics.jobs_finished.labels(kind=job.kind, status="cancelled").inc()
            events.cancelled(job.id, job.kind, job.model)
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
        queued = self.metrics.jobs_queued.labels(kind=job.kind)
        try:
            async with self._slots:
                queued.dec()
                job.status = JobStatus.RUNNING
                events.started(job.id, job.kind, job.model)
                with self.metrics.jobs_running.labels(kind=job.kind).track_inprogress():
                    started = self.clock()
                    result = await work(job.progress)
                    elapsed = self.clock() - started
                self._job_s = 0.8 * self._job_s + 0.2 * elapsed if self._job_s else elapsed
            self._store(job, result)
        except asyncio.CancelledError:
            if job.status is JobStatus.QUEUED:
                queued.dec()
            job.status, job.error = JobStatus.FAILED, ServeError(ErrorCode.CLIENT_CLOSED, "job cancelled")
            raise
        except ServeError as exc:
            job.status, job.error = JobStatus.FAILED, exc
        except Exception:
            log.exception("job %s (%s) failed", job.id, job.kind)
            job.status, job.error = JobStatus.FAILED, ServeError(ErrorCode.INTERNAL, "job failed")
        finally:
            job.finished = self.clock()
        self.metrics.jobs_finished.labels(kind=job.kind, status=job.status.value).inc()
        events.settled(job.id, job.kind, job.model, error=job.error, seconds=time.time() - job.created_at)

    def _store(self, job: Job, result: JobResult) -> None:
        size = len(result.body)
        if size > self.limits.max_result_bytes:
            raise result_too_large(size, self.limits.max_result_bytes)
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
