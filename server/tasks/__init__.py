"""The tasks: one runner per task, and the registry that builds the one a loaded model needs.

A task runner turns requests into model calls in named steps: `prepare` (a request's input -> an item, on the
request's side), then, on the model's worker thread, `collate` (items -> one batch on the model's device),
`forward`, `split` (the batch's output -> one result per item), and back on the request's side `respond` (a
result -> the answer, as the request asked). The batcher (server.engine.batching) drives the middle four through
the `TaskRunner` protocol; the routes call prepare and respond, whose signatures are the task's own.

Adding a task touches one place per layer: a runner module and an entry in RUNNERS here, its routes
(server.routers), its tensors for the Open Inference Protocol (server.v2.service.ADAPTERS) and its demo preset
(server.models.demo); a test checks that every `Task` has all four.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from server.limits import Limits
from server.settings import Task

if TYPE_CHECKING:  # importing the package costs no torch: the body-parsing helper imports labels
    import torch


class TaskRunner(Protocol):
    """The steps the batcher runs. `collate`, `forward` and `split` run on the model's worker thread."""

    def key(self, item: Any) -> Hashable: ...  # items with equal keys may share a batch
    def collate(self, items: Sequence[Any]) -> Any: ...  # stack the items' tensors, on the model's device
    def forward(self, batch: Any) -> Any: ...
    def split(self, output: Any, items: Sequence[Any]) -> list[Any]: ...  # one result per item, in order


@dataclass(frozen=True)
class Placement:
    """Where a loaded model lives, and what its runner may spend."""

    device: torch.device
    dtype: torch.dtype
    folder: Path | None  # the checkpoint's files (an image model's preprocessor_config.json)
    limits: Limits


RunnerFactory = Callable[["torch.nn.Module", Placement], TaskRunner]


def _fill_mask(model: torch.nn.Module, at: Placement) -> TaskRunner:
    from model_core import PerceiverForMaskedLM
    from server.tasks.fill_mask import FillMaskRunner

    assert isinstance(model, PerceiverForMaskedLM), "the loader checked the checkpoint's task"
    return FillMaskRunner(model, device=at.device)


def _text_classification(model: torch.nn.Module, at: Placement) -> TaskRunner:
    from model_core import PerceiverForTask
    from server.tasks.text_classification import TextClassificationRunner

    assert isinstance(model, PerceiverForTask), "the loader checked the checkpoint's task"
    return TextClassificationRunner(model, device=at.device)


def _image_classification(model: torch.nn.Module, at: Placement) -> TaskRunner:
    from model_core import PerceiverForTask
    from server.tasks.image_classification import ImageClassificationRunner

    assert isinstance(model, PerceiverForTask), "the loader checked the checkpoint's task"
    return ImageClassificationRunner(model, device=at.device, dtype=at.dtype, folder=at.folder)


def _optical_flow(model: torch.nn.Module, at: Placement) -> TaskRunner:
    from model_core import PerceiverForTask
    from server.tasks.optical_flow import OpticalFlowRunner

    assert isinstance(model, PerceiverForTask), "the loader checked the checkpoint's task"
    return OpticalFlowRunner(
        model,
        device=at.device,
        dtype=at.dtype,
        max_side=at.limits.max_flow_side,
        budget_bytes=at.limits.flow_budget_bytes,
    )


def _video_autoencoding(model: torch.nn.Module, at: Placement) -> TaskRunner:
    from model_core import PerceiverForTask
    from server.tasks.video_autoencoding import VideoAutoencodingRunner

    assert isinstance(model, PerceiverForTask), "the loader checked the checkpoint's task"
    return VideoAutoencodingRunner(model, device=at.device, dtype=at.dtype, budget_bytes=at.limits.decode_budget_bytes)


RUNNERS: dict[Task, RunnerFactory] = {  # each imports its module on first use: the package stays light
    Task.FILL_MASK: _fill_mask,
    Task.TEXT_CLASSIFICATION: _text_classification,
    Task.IMAGE_CLASSIFICATION: _image_classification,
    Task.OPTICAL_FLOW: _optical_flow,
    Task.VIDEO_AUTOENCODING: _video_autoencoding,
}


def make_runner(task: Task, model: torch.nn.Module, at: Placement) -> TaskRunner:
    """The runner of `task` for a loaded `model`."""
    return RUNNERS[task](model, at)
