"""The routes: one thin module per task (read the body, check the answer, run the call, respond), and the
probes, the model list and the job resource. `TASK_ROUTERS` has one router per task; `JOB_KINDS` the jobs routes
accept, which any replica can run from their stored description."""

from __future__ import annotations

from fastapi import APIRouter

from server.engine.jobs import JobKind
from server.routers import (
    autoencode_video,
    classify_image,
    classify_text,
    fill_mask,
    health,
    jobs,
    models,
    optical_flow,
)
from server.settings import Task

TASK_ROUTERS: dict[Task, APIRouter] = {
    Task.FILL_MASK: fill_mask.router,
    Task.TEXT_CLASSIFICATION: classify_text.router,
    Task.IMAGE_CLASSIFICATION: classify_image.router,
    Task.OPTICAL_FLOW: optical_flow.router,
    Task.VIDEO_AUTOENCODING: autoencode_video.router,
}
SERVICE_ROUTERS: tuple[APIRouter, ...] = (health.router, models.router, jobs.router)
JOB_KINDS: tuple[JobKind, ...] = (autoencode_video.JOB, optical_flow.JOB)
