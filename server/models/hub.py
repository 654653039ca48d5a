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

__all__ = [
    "Checkpoint",
    "HubRepo",
    "download_failure",
    "hub_offline",
    "is_hub_id",
    "locate",
    "missing_folder",
    "offline_variable",
]


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


_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_variable() -> str | None:
    """The environment variable that puts huggingface_hub offline now (HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE
    when HF_HUB_OFFLINE is absent, as huggingface_hub reads them), or None: advice names only what is set."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:  # huggingface_hub takes the first one present, even when it says "0"
            return name if value.strip().upper() in _TRUE else None
    return None


def hub_offline() -> bool:
    from huggingface_hub import constants

    return offline_variable() is not None or constants.HF_HUB_OFFLINE


def missing_folder(spec: Checkpoint) -> str | None:
    """What is wrong with `spec`'s source when it is a local path that is no folder (None for a folder or a hub
    id): found at start-up, rather than by the model's first request."""
    if is_hub_id(spec.source):
        return None
    path = Path(spec.source).expanduser()
    if path.is_dir():
        return None
    what = "is not a folder" if path.exists() else "does not exist"
    return f"model {spec.name!r}: source {spec.source} {what}"


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
    variable = offline_variable()
    online = f"unset {variable} so that the server can download it, or " if variable else ""
    return ServeError(
        ErrorCode.MODEL_UNAVAILABLE,
        (
            f"model {spec.name!r} ({spec.source}) is not available: {not_fetched(exc)}. To provide it: run "
            f"`perceiver-serve download {spec.name}` where the hub is reachable (with the same HF_HOME / cache "
            f"volume), or {online}set `source` of [models.{spec.name}] to a local folder written by save_pretrained."
        ),
        retry_after=30,
    )


def not_fetched(exc: BaseException) -> str:
    """Why a hub checkpoint is not here, in the terms of what is actually set: its files are not in the cache, and
    the hub was not asked (naming the variable that says so) or did not answer (with its first line)."""
    from huggingface_hub import constants

    variable = offline_variable()
    if variable:
        why = f"{variable} is set, so the hub is not asked"
    elif constants.HF_HUB_OFFLINE:
        why = "huggingface_hub is in offline mode, so the hub is not asked"
    else:
        while exc.__cause__ is not None:  # the network's own words, under model_core's and huggingface_hub's
            exc = exc.__cause__
        why = f"the hub did not provide them ({_first_line(exc)})"
    return f"its files are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}"


def download_failure(spec: Checkpoint, exc: ServeError) -> str:
    """The download command's report of a failure: what failed and what to change, never to run it again as is."""
    cause = exc.__cause__
    if not is_hub_id(spec.source) or not isinstance(cause, CheckpointNotFoundError):
        return str(cause or exc.message)
    from huggingface_hub import constants

    variable = offline_variable()
    if variable:
        fix = f"unset {variable} and run it again"
    elif constants.HF_HUB_OFFLINE:
        fix = "run it again with huggingface_hub online"
    else:
        fix = "check the name, or run it again where huggingface.co is reachable (HTTPS_PROXY is honoured)"
    return f"{spec.source}: {not_fetched(cause)}; {fix}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
