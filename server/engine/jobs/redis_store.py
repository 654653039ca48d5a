"""The Redis job store: jobs shared by every replica that uses the same Redis (`[server] jobs_url`).

Any replica accepts a job, any replica answers for it (status, progress, result, cancel), and whichever replica
has a free running slot runs it (redis_runner.py); a job whose runner dies runs again elsewhere from the start.
The limits are the in-process store's, counted over the whole cluster: jobs running or queued at most the live
replicas' running slots plus `max_queued`; results at most `max_result_bytes` together, the oldest finished
dropped first, each kept `result_ttl_s`; and, since inputs are kept there too until their job settles, inputs at
most `max_input_bytes` together. When Redis cannot be reached, job routes answer 503 and nothing else is touched.
"""

from __future__ import annotations

import json
import secrets

from redis.asyncio import Redis

from server.engine.jobs import events, records
from server.engine.jobs.kinds import Execute
from server.engine.jobs.records import Job, JobRequest, JobResult, JobStatus, Progress
from server.engine.jobs.redis_link import PREFIX, RedisJobs, error_from, reaching_redis, replica_name, text
from server.engine.jobs.redis_runner import JobRunner
from server.engine.metrics import Metrics
from server.errors import ErrorCode, ServeError
from server.limits import JobLimits


class RedisJobStore:
    def __init__(
        self,
        limits: JobLimits,
        *,
        client: Redis,
        execute: Execute,
        metrics: Metrics | None = None,
        replica: str | None = None,
        prefix: str = PREFIX,
    ) -> None:
        self.limits, self.metrics = limits, metrics or Metrics()
        self.redis = RedisJobs(client, prefix=prefix)
        self.runner = JobRunner(self.redis, limits, execute, self.metrics, replica=replica or replica_name())
        self.ttl_ms = int(limits.result_ttl_s * 1000)

    def start(self) -> None:
        self.runner.start()

    def problem(self) -> str | None:
        """Why jobs cannot be accepted now (Redis unreachable), from the runner's last heartbeat."""
        return self.runner.problem

    async def close(self) -> None:
        await self.runner.close()
        await self.redis.client.aclose()

    async def admit(self) -> None:
        """429 (with Retry-After) when the cluster holds as many running and queued jobs as it accepts: checked
        before the upload is read (the submission checks again, atomically)."""
        with reaching_redis():
            active, slots, job_ms = await self.redis.run("load", self.ttl_ms, self.limits.max_running)
        self._check_room(int(active), int(slots), int(job_ms))

    async def enqueue(self, request: JobRequest, *, owner: str | None) -> Job:
        records.check_request(
            request, max_result_bytes=self.limits.max_result_bytes, max_input_bytes=self.limits.max_input_bytes
        )
        job_id = secrets.token_urlsafe(16)
        parts = [value for name, data in request.inputs.items() for value in (name, data)]
        with reaching_redis():
            reply = await self.redis.run(
                "submit",
                self.ttl_ms,
                self.limits.max_running,
                self.limits.max_queued,
                self.limits.max_input_bytes,
                job_id,
                request.kind,
                request.model,
                json.dumps(dict(request.params)),
                owner or "",
                request.total,
                *parts,
            )
        what = text(reply[0])
        if what == "full":
            self._check_room(int(reply[1]), int(reply[2]), int(reply[3]))
        if what == "memory":
            raise ServeError(
                ErrorCode.OVERLOADED,
                f"the inputs of waiting and running jobs fill the job store ({int(reply[1])} bytes; "
                f"max_job_inputs_mb): retry when some have run",
                retry_after=max(1.0, self.limits.heartbeat_s),
            )
        created = int(reply[1]) / 1000
        events.submitted(job_id, request.kind, request.model, total=request.total)
        progress = Progress(0, request.total)
        return Job(job_id, request.kind, created, progress=progress, owner=owner, model=request.model)

    async def find(self, job_id: str, *, owner: str | None, with_result: bool = False) -> Job:
        with reaching_redis():
            fields = await self.redis.run("read", job_id, self.ttl_ms, "1" if with_result else "0")
        if not fields:
            raise records.unknown_job(job_id)
        kind, status, done, total, created, job_owner, error, media_type, headers, finished, body = fields
        if not records.owns(text(job_owner), owner):
            raise records.unknown_job(job_id)
        job = Job(
            id=job_id,
            kind=text(kind),
            created_at=int(created) / 1000,
            status=JobStatus(text(status)),
            progress=Progress(int(done), int(total)),
            error=error_from(error),
            finished=int(finished) / 1000 if finished else None,
            owner=text(job_owner) or None,
        )
        if with_result and job.status is JobStatus.DONE:
            if body is None:  # its result was dropped for room, or expired, since the status was read
                raise records.unknown_job(job_id)
            job.result = JobResult(body, text(media_type), json.loads(headers or b"{}"))
        return job

    async def cancel(self, job_id: str, *, owner: str | None = None) -> None:
        """Forget the job everywhere; the replica running it sees that at its next heartbeat and stops."""
        job = await self.find(job_id, owner=owner)
        with reaching_redis():
            had = await self.redis.run("cancel", job_id)
        if text(had) in (JobStatus.QUEUED, JobStatus.RUNNING):
            self.metrics.jobs_finished.labels(kind=job.kind, status="cancelled").inc()
            events.cancelled(job_id, job.kind, job.model)

    def _check_room(self, active: int, slots: int, job_ms: int) -> None:
        capacity = slots + self.limits.max_queued
        if active >= capacity:
            raise records.overloaded(active, capacity, job_s=job_ms / 1000, slots=slots)
