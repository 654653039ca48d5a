"""Job kinds: how to run a stored job description, and the executor that runs one on its model.

The routes that accept jobs register their kind (a name, the task whose model it runs on, and how to run it from
its `JobRequest`); either store runs the same descriptions through one `Executor`, so a job accepted by one
replica runs the same on any other. The engine knows nothing of the kinds themselves.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from server.engine.jobs.records import JobRequest, JobResult, Progress
from server.engine.serving import Call, InferenceService
from server.errors import ErrorCode, ServeError
from server.settings import Task

RunJob = Callable[[Call, JobRequest, Progress], Awaitable[JobResult]]
Execute = Callable[[JobRequest, Progress], Awaitable[JobResult]]


@dataclass(frozen=True)
class JobKind:
    name: str  # what /jobs/{id} calls it, e.g. autoencode-video
    task: Task  # whose model it runs on
    run: RunJob  # the job's work on an open call, from its stored description


class Executor:
    """Runs a job description on its model (loaded first if needed), each unit of its work given
    `unit_timeout_s` in the model's queue; no client watches it (the store cancels it)."""

    def __init__(self, service: InferenceService, kinds: Iterable[JobKind], *, unit_timeout_s: float) -> None:
        self.service, self.unit_timeout_s = service, unit_timeout_s
        self.kinds = {kind.name: kind for kind in kinds}

    async def __call__(self, request: JobRequest, progress: Progress) -> JobResult:
        kind = self.kinds.get(request.kind)
        if kind is None:  # a replica of another version, or a store shared by mistake
            raise ServeError(ErrorCode.INTERNAL, f"this server cannot run jobs of kind {request.kind!r}")
        spec = self.service.resolve(kind.task, request.model)
        timeout_s = self.unit_timeout_s
        deadline = time.monotonic() + timeout_s
        async with self.service.open(spec, deadline=deadline, unit_timeout_s=timeout_s) as call:
            return await kind.run(call, request, progress)
