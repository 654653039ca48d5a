"""Adding a task touches one place per layer: each layer's registry names every task."""

from __future__ import annotations

from server.models.demo import DEMO_MODELS
from server.routers import TASK_ROUTERS
from server.settings import Task
from server.tasks import RUNNERS
from server.v2.service import ADAPTERS


def test_every_task_has_a_runner_a_route_tensors_and_a_demo() -> None:
    every = set(Task)
    assert set(RUNNERS) == every, "server/tasks/__init__.py RUNNERS"
    assert set(TASK_ROUTERS) == every, "server/routers/__init__.py TASK_ROUTERS"
    assert set(ADAPTERS) == every, "server/v2/service.py ADAPTERS"
    assert {m.task for m in DEMO_MODELS} == every, "server/models/demo.py DEMO_MODELS"
    assert len({id(r) for r in TASK_ROUTERS.values()}) == len(every)  # one router per task
