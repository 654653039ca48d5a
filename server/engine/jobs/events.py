"""Job events in the log, the same from either store: submitted, running (and each unit of progress, at debug),
finished, failed, cancelled, each with the job's id, kind and model (logger `server.engine.jobs`). A job's uploads
and results are never logged, nor its owner."""

from __future__ import annotations

import logging

from server.errors import ServeError

log = logging.getLogger("server.engine.jobs")


def submitted(job_id: str, kind: str, model: str, *, total: int) -> None:
    log.info(
        "job %s submitted: %s on %s, %d unit(s) of work", job_id, kind, model, total, extra=_of(job_id, kind, model)
    )


def started(job_id: str, kind: str, model: str, *, attempt: int = 1) -> None:
    again = f" (attempt {attempt})" if attempt > 1 else ""
    log.info("job %s running%s", job_id, again, extra=_of(job_id, kind, model) | {"attempt": attempt})


def progressed(job_id: str, kind: str, model: str, *, done: int, total: int) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug("job %s: %d/%d", job_id, done, total, extra=_of(job_id, kind, model) | {"done": done, "total": total})


def settled(job_id: str, kind: str, model: str, *, error: ServeError | None, seconds: float) -> None:
    fields = _of(job_id, kind, model) | {"duration_s": round(seconds, 3)}
    if error is None:
        log.info("job %s finished in %.1fs", job_id, seconds, extra=fields)
    else:
        fields |= {"error_code": error.code.value}
        log.info("job %s failed after %.1fs: %s", job_id, seconds, error.message, extra=fields)


def cancelled(job_id: str, kind: str, model: str) -> None:
    log.info("job %s cancelled", job_id, extra=_of(job_id, kind, model))


def _of(job_id: str, kind: str, model: str) -> dict[str, str]:
    return {"job_id": job_id, "kind": kind, "model": model}
