"""What a job is, whichever store keeps it: its status and progress, its result, who owns it, and the description
it runs from.

A job crosses processes as its description (`JobRequest`: the kind, the configured model's name, JSON parameters
and the uploaded files), never as a closure, so any replica can run it from the start. The errors both stores
answer with are built here, so the two say the same thing.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from server.engine.jobs import events
from server.errors import ErrorCode, ServeError

JsonValue = str | int | float | bool | None


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
    job: tuple[str, str, str] | None = field(default=None, repr=False, compare=False)  # (id, kind, model): logged

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.job is not None:
            events.progressed(*self.job, done=done, total=total)


@dataclass(frozen=True)
class JobRequest:
    """A job as it is stored: enough for any process to run it from the start.

    `params` are the kind's own (the route's query, as JSON values); `inputs` the uploaded files by part name;
    `result_bytes` the most its result can be (what the route's answer check allowed), for a 413 at submit."""

    kind: str
    model: str  # a configured model's name: every replica has the same configuration
    params: Mapping[str, JsonValue]
    inputs: Mapping[str, bytes]
    total: int  # units of work, the progress total
    result_bytes: int

    @property
    def input_bytes(self) -> int:
        return sum(len(data) for data in self.inputs.values())


@dataclass(eq=False)
class Job:
    id: str
    kind: str
    created_at: float  # time.time()
    status: JobStatus = JobStatus.QUEUED
    progress: Progress = field(default_factory=Progress)
    result: JobResult | None = None
    error: ServeError | None = None
    finished: float | None = None  # the store's clock
    task: Any = None  # the in-process store's asyncio.Task
    owner: str | None = None  # the SHA-256 (hex) of the API key that submitted it; None without keys
    model: str = ""  # the configured model it runs on (for the log; "" where the store did not read it)

    @property
    def active(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)


def owns(job_owner: str | None, owner: str | None) -> bool:
    """Whether a request made with `owner` (its key's digest, or None) may see a job submitted with `job_owner`.
    A job submitted without a key is anyone's: keys were off when it was accepted."""
    if not job_owner:
        return True
    return owner is not None and hmac.compare_digest(job_owner.encode(), owner.encode())


def unknown_job(job_id: str) -> ServeError:
    """The one answer for a job that is not there or not the caller's: the two must look the same."""
    return ServeError(ErrorCode.NOT_FOUND, f"no job {job_id!r} (unknown, cancelled, or its result expired)")


def overloaded(active: int, capacity: int, *, job_s: float, slots: int) -> ServeError:
    """429 for a store holding `active` running or queued jobs out of `capacity`; Retry-After from the average
    job's run time and the jobs ahead."""
    waiting = active - slots + 1
    retry = max(1.0, job_s * waiting / max(1, slots))
    return ServeError(
        ErrorCode.OVERLOADED,
        f"{active} jobs are running or queued; at most {capacity} are accepted",
        retry_after=retry,
    )


def result_too_large(size: int, limit: int) -> ServeError:
    return ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"the result is {size} bytes; at most {limit} can be kept")


def check_request(request: JobRequest, *, max_result_bytes: int, max_input_bytes: int | None = None) -> None:
    """413 at submit for a job whose result could not be kept (or, where inputs are bounded, whose input could
    not be held) whatever else the store holds."""
    if request.result_bytes > max_result_bytes:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the job's result could be about {_mib(request.result_bytes)}; job results are limited to "
            f"{_mib(max_result_bytes)} (max_job_results_mb): ask for less, or run it synchronously",
        )
    if max_input_bytes is not None and request.input_bytes > max_input_bytes:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the job's input is {_mib(request.input_bytes)}; the inputs of waiting and running jobs are limited "
            f"to {_mib(max_input_bytes)} (max_job_inputs_mb)",
        )


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"
