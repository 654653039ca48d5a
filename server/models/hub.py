"""Where a model's files come from: a local folder, the Hugging Face cache, or the hub (downloaded).

Offline and not cached is a clear `ServeError(MODEL_UNAVAILABLE)` naming the model and the fix,
raised fast: the cache is consulted first without network, and hub look-ups have short timeouts.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from dataclasses import dataclass
from typing import Protocol

from server.errors import ErrorCode, ServeError

log = logging.getLogger(__name__)

CONFIG_FILES = ["config.json", "preprocessor_config.json"]
WEIGHT_FILES = ["*.safetensors", "pytorch_model.bin"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")
_TIMEOUT_S = 10.0


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


def is_hub_id(source: str) -> bool:
    """A hub id (`owner/name`) is anything that is not an existing path and has that shape."""
    return not Path(source).expanduser().exists() and not source.startswith(("/", ".", "~")) \
        and _HUB_ID.match(source) is not None


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or constants.HF_HUB_OFFLINE


def _unavailable(spec: Checkpoint, why: str) -> ServeError:
    from huggingface_hub import constants

    return ServeError(ErrorCode.MODEL_UNAVAILABLE, (
        f"model {spec.name!r} ({spec.source}) is not available: its files are not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and {why}. To provide it: run `perceiver-serve download {spec.name}` "
        f"where the hub is reachable (with the same HF_HOME / cache volume), or unset HF_HUB_OFFLINE so the server "
        f"can download it, or set `source` of [models.{spec.name}] to a local folder written by save_pretrained."
    ), retry_after=30)


def download(spec: Checkpoint) -> Path:
    """Fetch the hub files of `spec` into the HF cache (no-op for a local folder); returns the folder."""
    from huggingface_hub import snapshot_download

    if not is_hub_id(spec.source):
        return _local_folder(spec)
    if hub_offline():
        raise _unavailable(spec, "HF_HUB_OFFLINE is set")
    try:  # safetensors when the repository has them, else pytorch_model.bin
        folder = Path(snapshot_download(spec.source, allow_patterns=[*CONFIG_FILES, "*.safetensors"],
                                        etag_timeout=_TIMEOUT_S))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(spec.source, allow_patterns=[*CONFIG_FILES, "pytorch_model.bin"],
                                            etag_timeout=_TIMEOUT_S))
        return folder
    except Exception as exc:
        raise _unavailable(spec, f"the hub could not be reached ({type(exc).__name__}: {_first_line(exc)})") from exc


def locate(spec: Checkpoint) -> Path:
    """The checkpoint folder of `spec`: a local folder, a cached snapshot, or (online) a download."""
    from huggingface_hub import snapshot_download

    if not is_hub_id(spec.source):
        return _local_folder(spec)
    try:
        return Path(snapshot_download(spec.source, allow_patterns=CONFIG_FILES + WEIGHT_FILES, local_files_only=True))
    except Exception:
        log.info("model %s: %s is not in the HF cache", spec.name, spec.source)
    if hub_offline():
        raise _unavailable(spec, "HF_HUB_OFFLINE is set")
    log.info("model %s: downloading %s from the hub", spec.name, spec.source)
    return download(spec)


def _local_folder(spec: Checkpoint) -> Path:
    folder = Path(spec.source).expanduser()
    if not folder.is_dir():
        raise ServeError(ErrorCode.MODEL_UNAVAILABLE, (
            f"model {spec.name!r}: checkpoint folder {spec.source} does not exist; set `source` of "
            f"[models.{spec.name}] to a folder written by save_pretrained (config.json + model.safetensors) "
            f"or to a hub id"))
    return folder


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
