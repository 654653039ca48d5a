"""The Redis store's runner, one per process: work is claimed, never pushed.

While this process has a free running slot it claims the next job (an abandoned one first: a job whose runner
stopped heartbeating for `heartbeat_s`), runs it from its stored description and settles it. Every tick it
heartbeats: it registers its slots (the cluster's capacity is the sum over live replicas), writes the progress
of the jobs it runs, and learns which of them it no longer owns (cancelled from any replica, or taken over after
it stalled), whose work it then stops. At shutdown it hands its running jobs back, so another replica starts
them at once instead of after a heartbeat timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from server.engine.jobs import events
from server.engine.jobs.kinds import Execute
from server.engine.jobs.records import JobRequest, JobResult, JobStatus, Progress, result_too_large
from server.engine.jobs.redis_link import RedisJobs, error_json, text
from server.engine.metrics import Metrics
from server.errors import ErrorCode, ServeError
from server.limits import JobLimits

log = logging.getLogger(__name__)

MAX_TICK_S = 0.5  # progress is written, and idle runners look for abandoned work, at least this often
RETRY_S = 1.0  # while Redis cannot be reached
MAX_ATTEMPTS = 3  # a job whose runners stop this many times (killed, out of memory) is failed, not run again
GAVE_UP = error_json(
    ServeError(
        ErrorCode.INTERNAL,
        f"the job's runner stopped {MAX_ATTEMPTS} times (killed or out of memory?); it is not run again",
    )
)
Outcome = tuple[JobStatus, JobResult | None, ServeError | None]


@dataclass(frozen=True)
class Claimed:
    id: str
    entry: str  # the stream entry this process holds while it runs the job
    attempt: int  # the fence: writes of an earlier attempt are refused
    abandoned: bool  # taken over from a replica that stopped heartbeating (or handed it back)
    request: JobRequest

    @classmethod
    def of(cls, reply: Sequence[Any]) -> Claimed:
        _, job_id, entry, attempt, abandoned, kind, model, params, total, inputs = reply
        request = JobRequest(
            kind=text(kind),
            model=text(model),
            params=json.loads(params),
            inputs={text(inputs[i]): inputs[i + 1] for i in range(0, len(inputs), 2)},
            total=int(total),
            result_bytes=0,  # checked at submit
        )
        return cls(text(job_id), text(entry), int(attempt), bool(abandoned), request)


@dataclass(eq=False)
class Running:
    claimed: Claimed
    progress: Progress
    task: asyncio.Task[None] | None = None
    lost: bool = False  # cancelled from another replica, or taken over: its work is stopped, its result dropped
    settling: bool = False  # its work is over; the result is on its way to Redis


class JobRunner:
    def __init__(
        self, redis: RedisJobs, limits: JobLimits, execute: Execute, metrics: Metrics, *, replica: str
    ) -> None:
        self.redis, self.limits, self.execute, self.metrics, self.replica = redis, limits, execute, metrics, replica
        self.tick_s = min(MAX_TICK_S, limits.heartbeat_s / 6)
        self.heartbeat_ms, self.ttl_ms = int(limits.heartbeat_s * 1000), int(limits.result_ttl_s * 1000)
        self.problem: str | None = "the job store (Redis) has not answered yet"
        self._failing = False  # a failure is logged once, not every tick
        self._slots = asyncio.Semaphore(limits.max_running)
        self._running: dict[str, Running] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._closing = False
        self._kinds: set[str] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._keep(), name="jobs-keeper"), loop.create_task(self._claim())]

    async def close(self) -> None:
        """Stop claiming, stop the jobs running here and hand them back to the other replicas."""
        self._closing = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        held = list(self._running.values())
        for running in held:
            if running.task is not None and not running.settling:
                running.task.cancel()
        await asyncio.gather(*(r.task for r in held if r.task is not None), return_exceptions=True)
        back = [str(v) for r in held for v in (r.claimed.id, r.claimed.attempt, r.claimed.entry)]
        try:
            await asyncio.wait_for(self.redis.run("release", self.replica, self.heartbeat_ms, *back), RETRY_S * 5)
        except (RedisError, TimeoutError) as exc:  # then they are claimed once their heartbeat times out
            log.warning("job store: could not hand back %d running job(s): %s", len(held), type(exc).__name__)

    # -- claiming

    async def _claim(self) -> None:
        while not self._closing:  # not only the cancellation: redis-py may swallow one (redis-py#2551)
            await self._slots.acquire()
            try:
                reply = await self._take()
            except RedisError as exc:
                self._slots.release()
                self._failed(exc)
                await asyncio.sleep(RETRY_S)
                continue
            what = text(reply[0])
            if what == "job":
                self._launch(Claimed.of(reply))
                continue
            self._slots.release()
            if what == "none":
                await self._wait_for_work(text(reply[1]))
            elif what == "gave_up":
                log.warning("job %s: its runners stopped %d times; failed", text(reply[1]), MAX_ATTEMPTS)
                self.metrics.jobs_finished.labels(kind=text(reply[2]), status="failed").inc()

    async def _take(self) -> Any:
        """The claim script's reply. Shutdown cancels the claim loop; if that happens while a claim is on its
        way, the reply is still read, and a job it took is held to be handed back with the running ones."""
        pending = asyncio.ensure_future(
            self.redis.run("claim", self.replica, self.heartbeat_ms, self.ttl_ms, MAX_ATTEMPTS, GAVE_UP)
        )
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            with contextlib.suppress(RedisError):
                reply = await pending
                if text(reply[0]) == "job":
                    claimed = Claimed.of(reply)
                    self._running[claimed.id] = Running(claimed, _progress(claimed))
            raise

    async def _wait_for_work(self, last_id: str) -> None:
        """Until an entry newer than `last_id` is added, or a tick passes (abandoned work is found by claiming)."""
        try:
            await self.redis.client.xread({self.redis.stream: last_id}, count=1, block=int(self.tick_s * 1000))
        except RedisError as exc:
            self._failed(exc)
            await asyncio.sleep(RETRY_S)

    def _launch(self, claimed: Claimed) -> None:
        running = Running(claimed, _progress(claimed))
        self._running[claimed.id] = running
        running.task = asyncio.get_running_loop().create_task(self._run(running), name=f"job-{claimed.request.kind}")

    # -- running

    async def _run(self, running: Running) -> None:
        claimed, kind = running.claimed, running.claimed.request.kind
        if claimed.abandoned:
            log.info("job %s: claimed from a stopped replica; it runs again (attempt %d)", claimed.id, claimed.attempt)
            self.metrics.jobs_claimed.labels(kind=kind).inc()
        events.started(claimed.id, kind, claimed.request.model, attempt=claimed.attempt)
        try:
            with self.metrics.jobs_running.labels(kind=kind).track_inprogress():
                started = time.monotonic()
                try:
                    outcome = await self._outcome(running)
                except asyncio.CancelledError:
                    if running.lost or self._closing:
                        return
                    raise
                running.settling = True
                await self._settle(running, outcome, elapsed_ms=int((time.monotonic() - started) * 1000))
        finally:
            self._running.pop(claimed.id, None)
            self._slots.release()

    async def _outcome(self, running: Running) -> Outcome:
        try:
            result = await self.execute(running.claimed.request, running.progress)
        except ServeError as exc:
            return JobStatus.FAILED, None, exc
        except Exception:
            log.exception("job %s (%s) failed", running.claimed.id, running.claimed.request.kind)
            return JobStatus.FAILED, None, ServeError(ErrorCode.INTERNAL, "job failed")
        if len(result.body) > self.limits.max_result_bytes:
            return JobStatus.FAILED, None, result_too_large(len(result.body), self.limits.max_result_bytes)
        return JobStatus.DONE, result, None

    async def _settle(self, running: Running, outcome: Outcome, *, elapsed_ms: int) -> None:
        """Store the outcome, fenced; while Redis cannot be reached, keep trying (until shutdown hands it back)."""
        claimed, (status, result, error) = running.claimed, outcome
        args = [
            claimed.id,
            self.replica,
            str(claimed.attempt),
            status.value,
            self.ttl_ms,
            self.limits.max_result_bytes,
            elapsed_ms,
            error_json(error) if error is not None else "",
            result.media_type if result is not None else "",
            json.dumps(result.headers) if result is not None else "",
            result.body if result is not None else b"",
        ]
        while True:
            try:
                reply = await self.redis.run("finish", *args)
                break
            except RedisError as exc:
                self._failed(exc)
                if self._closing:
                    return
                await asyncio.sleep(RETRY_S)
        if text(reply) == "stale":
            log.info("job %s: cancelled or taken over meanwhile; the result from here is dropped", claimed.id)
        else:
            self.metrics.jobs_finished.labels(kind=claimed.request.kind, status=status.value).inc()
            request = claimed.request
            events.settled(claimed.id, request.kind, request.model, error=error, seconds=elapsed_ms / 1000)

    # -- heartbeats

    async def _keep(self) -> None:
        while not self._closing:  # as in _claim: a cancellation that lands inside redis-py can be lost
            await self._beat()
            await asyncio.sleep(self.tick_s)

    async def _beat(self) -> None:
        held = [r for r in self._running.values() if not r.lost]
        touch = [str(v) for r in held for v in (r.claimed.id, r.claimed.entry, r.claimed.attempt, r.progress.done)]
        try:
            lost, counts = await self.redis.run(
                "beat", self.replica, self.limits.max_running, self.heartbeat_ms, self.ttl_ms, *touch
            )
        except RedisError as exc:
            self._failed(exc)
            return
        if self.problem is not None:
            log.info("job store: Redis answers")
            self._failing, self.problem = False, None
        for job_id in map(text, lost):
            running = self._running.get(job_id)
            if running is not None and running.task is not None and not running.settling:
                log.info("job %s: cancelled, or taken over by another replica; its work here stops", job_id)
                running.lost = True
                running.task.cancel()
        self._publish({text(counts[i]): int(counts[i + 1]) for i in range(0, len(counts), 2)})

    def _publish(self, counts: dict[str, int]) -> None:
        """The shared queue's length per kind (the same on every replica)."""
        queued = {name.partition(":")[2]: n for name, n in counts.items() if name.startswith("queued:")}
        self._kinds |= set(queued)
        for kind in self._kinds:
            self.metrics.jobs_queued.labels(kind=kind).set(queued.get(kind, 0))

    def _failed(self, exc: RedisError) -> None:
        if not self._failing:
            log.warning("job store: cannot reach Redis (%s: %s); retrying", type(exc).__name__, exc)
        self._failing, self.problem = True, f"the job store (Redis) cannot be reached ({type(exc).__name__})"


def _progress(claimed: Claimed) -> Progress:
    return Progress(0, claimed.request.total, job=(claimed.id, claimed.request.kind, claimed.request.model))
