"""Background jobs: long requests answered 202 at once, then polled for progress and result.

Two stores behind one interface (`Jobs`): in process (the default, for a single process) and Redis (`[server]
jobs_url`), shared by every replica. Both run the same job descriptions (`JobRequest`) through the kinds the
routes register (`JobKind`, `Executor`).
"""

from __future__ import annotations

from typing import Protocol

from server.engine.jobs.kinds import Execute, Executor, JobKind, RunJob
from server.engine.jobs.local import JobStore
from server.engine.jobs.records import Job, JobRequest, JobResult, JobStatus, Progress
from server.engine.metrics import Metrics
from server.limits import JobLimits
from server.settings import ServerSettings

__all__ = [
    "Execute",
    "Executor",
    "Job",
    "JobKind",
    "JobRequest",
    "JobResult",
    "JobStatus",
    "JobStore",
    "Jobs",
    "Progress",
    "RunJob",
    "open_job_store",
]


class Jobs(Protocol):
    """What the routes and the app use of a job store. `owner` is the digest of the request's API key (None
    without keys): another key's job is 404, as an unknown one."""

    def start(self) -> None: ...  # background work, from the app's start-up
    def problem(self) -> str | None: ...  # why jobs cannot be accepted now (for readiness), or None
    async def admit(self) -> None: ...  # 429 (or 503) before an upload is read
    async def enqueue(self, request: JobRequest, *, owner: str | None) -> Job: ...
    async def find(self, job_id: str, *, owner: str | None, with_result: bool = False) -> Job: ...
    async def cancel(self, job_id: str, *, owner: str | None = None) -> None: ...
    async def close(self) -> None: ...


def open_job_store(server: ServerSettings, limits: JobLimits, *, execute: Execute, metrics: Metrics) -> Jobs:
    """The Redis store when `jobs_url` is set, else the in-process one."""
    if server.jobs_url is None:
        return JobStore(limits, execute=execute, metrics=metrics)
    from server.engine.jobs.redis_link import connect
    from server.engine.jobs.redis_store import RedisJobStore

    client = connect(server.jobs_url.get_secret_value(), password_file=server.jobs_password_file)
    return RedisJobStore(limits, client=client, execute=execute, metrics=metrics)
