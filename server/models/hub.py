"""Where a model's files come from: model_core's checkpoint resolver (a local folder, the Hugging Face cache, or
a download), its failures told in the server's terms: which model, what is missing, and how to provide it.

The cache is consulted first without network, so an offline server with the files cached starts at once, and
an offline server without them answers a clear 503 fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from model_core.checkpoint import is_hub_id, resolve_source
from model_core.errors import CheckpointNotFoundError
from server.errors import ErrorCode, ServeError

__all__ = ["Checkpoint", "HubRepo", "hub_offline", "is_hub_id", "locate"]


class Checkpoint(Protocol):
    """What this module needs of a model: a ModelSpec, or a bare `HubRepo` for the download command."""

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class HubRepo:
    name: str
    source: str


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or constants.HF_HUB_OFFLINE


def locate(spec: Checkpoint) -> Path:
    """The checkpoint folder of `spec`: a local folder, a cached snapshot (config, weights, every shard of a
    sharded checkpoint), or, online, a download of what is missing. ServeError(MODEL_UNAVAILABLE) otherwise."""
    try:  # HF_HUB_OFFLINE is read now, not when huggingface_hub was imported
        return resolve_source(spec.source, local_files_only=hub_offline() or None)
    except CheckpointNotFoundError as exc:
        raise _unavailable(spec, exc) from exc


def _unavailable(spec: Checkpoint, exc: CheckpointNotFoundError) -> ServeError:
    if not is_hub_id(spec.source):
        return ServeError(
            ErrorCode.MODEL_UNAVAILABLE,
            (
                f"model {spec.name!r}: checkpoint folder {spec.source} does not exist; set `source` of "
                f"[models.{spec.name}] to a folder written by save_pretrained (config.json + model.safetensors) "
                f"or to a hub id"
            ),
        )
    from huggingface_hub import constants

    offline = hub_offline()
    why = "HF_HUB_OFFLINE is set" if offline else f"the hub could not be reached ({_first_line(exc)})"
    online = "unset HF_HUB_OFFLINE so the server can download it, or " if offline else ""
    return ServeError(
        ErrorCode.MODEL_UNAVAILABLE,
        (
            f"model {spec.name!r} ({spec.source}) is not available: its files are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {why}. To provide it: run `perceiver-serve download {spec.name}` "
            f"where the hub is reachable (with the same HF_HOME / cache volume), or {online}set `source` of "
            f"[models.{spec.name}] to a local folder written by save_pretrained."
        ),
        retry_after=30,
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
