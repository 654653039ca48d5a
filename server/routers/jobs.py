"""GET /jobs/{id} (status and progress), GET /jobs/{id}/result, DELETE /jobs/{id} (cancel): from any replica
when jobs are shared (Redis), and only for the API key that submitted the job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from server.deps import JobsDep, OwnerDep
from server.engine.jobs import Job, JobStatus
from server.errors import ErrorBody, ErrorCode, error_response, responses

router = APIRouter(tags=["jobs"])
RETRY_AFTER_S = 1  # what a poll of an unfinished job is told
ERRORS = responses(ErrorCode.NOT_FOUND, ErrorCode.JOBS_UNAVAILABLE)


JobId = Annotated[str, Path(min_length=1, max_length=64, description="The id a 202 answer's Location names")]


class JobProgress(BaseModel):
    done: int = Field(description="Units of work finished (for a clip: window encodes and decode passes)")
    total: int = Field(description="Units of work in all")


class JobInfo(BaseModel):
    id: str
    kind: str = Field(description="What the job does, e.g. autoencode-video")
    status: JobStatus
    progress: JobProgress
    created_at: float = Field(description="Unix time the job was accepted")
    result: str | None = Field(None, description="Where to GET the result, once done")
    error: ErrorBody | None = Field(None, description="Why the job failed")


def job_info(job: Job) -> JobInfo:
    error = None
    if job.error is not None:
        error = ErrorBody(code=job.error.code, message=job.error.message, status=job.error.status)
    return JobInfo(
        id=job.id,
        kind=job.kind,
        status=job.status,
        created_at=job.created_at,
        progress=JobProgress(done=job.progress.done, total=job.progress.total),
        result=f"/jobs/{job.id}/result" if job.status is JobStatus.DONE else None,
        error=error,
    )


def accepted(job: Job, headers: dict[str, str] | None = None) -> JSONResponse:
    """The 202 answer to a request turned into a job."""
    return JSONResponse(
        job_info(job).model_dump(mode="json", exclude_none=True),
        status_code=202,
        headers={"Location": f"/jobs/{job.id}", "Retry-After": str(RETRY_AFTER_S), **(headers or {})},
    )


ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "model": JobInfo,
        "description": ("Accepted as a background job: poll the Location (GET /jobs/{id}), then GET /jobs/{id}/result"),
    }
}


@router.get(
    "/jobs/{job_id}",
    response_model=JobInfo,
    response_model_exclude_none=True,
    responses=ERRORS,
    summary="A background job's status and progress",
)
async def get_job(job_id: JobId, jobs: JobsDep, owner: OwnerDep) -> JobInfo:
    return job_info(await jobs.find(job_id, owner=owner))


@router.get(
    "/jobs/{job_id}/result",
    summary="A finished job's result (202 while it runs)",
    responses={
        200: {
            "description": "The result, in the media type the request asked for",
            "content": {"application/octet-stream": {}},
        },
        202: {"model": JobInfo, "description": "Not finished yet: retry after Retry-After"},
        **ERRORS,
    },
    response_class=Response,
)
async def get_result(job_id: JobId, jobs: JobsDep, owner: OwnerDep) -> Response:
    job = await jobs.find(job_id, owner=owner, with_result=True)
    if job.status is JobStatus.DONE and job.result is not None:
        return Response(job.result.body, media_type=job.result.media_type, headers=job.result.headers)
    if job.status is JobStatus.FAILED and job.error is not None:
        return error_response(job.error)
    return JSONResponse(
        job_info(job).model_dump(mode="json", exclude_none=True),
        status_code=202,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    response_class=Response,
    responses=ERRORS,
    summary="Cancel a job (or discard its result); its queued work is dropped",
)
async def cancel_job(job_id: JobId, jobs: JobsDep, owner: OwnerDep) -> Response:
    await jobs.cancel(job_id, owner=owner)
    return Response(status_code=204)
