"""Checkpoint folders in the Hugging Face layout: find them, read them, write them.

A folder holds config.json and the weights as model.safetensors (preferred) or
pytorch_model.bin (read only through `torch.load(weights_only=True)`), or a sharded
`*.index.json` of either. A source is such a folder or a hub repository id, fetched
through huggingface_hub's cache (HF_HUB_OFFLINE and HF_HOME are honoured).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_core.assemblies import TaskModel, build_model
from model_core.config import PerceiverConfig
from model_core.cpu_packing import packing_supported, prepack_linears
from model_core.errors import CheckpointError, CheckpointNotFoundError, StateDictMismatchError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS_FILE, PICKLE_FILE, SAFETENSORS_FILE + ".index.json", PICKLE_FILE + ".index.json")
OPTIONAL_FILES = ("preprocessor_config.json",)


_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")  # owner/name, or a legacy one-word id


def is_hub_id(source: str | Path) -> bool:
    """Whether `source` names a hub repository: `owner/name` (or a legacy one-word id) that is no existing
    path; `/x`, `./x` and `~/x` are always paths."""
    text = str(source)
    return (
        not isinstance(source, Path)
        and not text.startswith(("/", ".", "~"))
        and _HUB_ID.match(text) is not None
        and not Path(text).expanduser().exists()
    )


def resolve_source(
    source: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """A local checkpoint folder for `source`: the folder itself, or the hub snapshot (cache first; only the
    cache with `local_files_only`)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if not is_hub_id(source):
        raise CheckpointNotFoundError(f"checkpoint folder {str(source)!r} does not exist")
    return download(str(source), revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)


def download(
    repo_id: str, *, revision: str | None = None, cache_dir: str | None = None, local_files_only: bool | None = None
) -> Path:
    """Fetch config.json and one weights file of a hub repository into the cache.

    The cache is tried first, so a cached checkpoint loads with no network at all; the hub
    is asked only for what is missing (never with HF_HUB_OFFLINE=1 or local_files_only).
    """
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        try:
            return _fetch_files(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
        except LocalEntryNotFoundError:
            if local_files_only:
                raise
            return _fetch_files(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=False)
    except LocalEntryNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"{repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached "
            f"(offline, or HF_HUB_OFFLINE=1). Download it where the hub is reachable "
            f"(`huggingface-cli download {repo_id}`) into the cache (HF_HOME), or use a local folder "
            f"with config.json and model.safetensors. ({type(exc).__name__})"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointNotFoundError(f"cannot fetch {repo_id!r} from the hub: {exc}") from exc


def _fetch_files(repo_id: str, *, local_files_only: bool, revision: str | None, cache_dir: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    def fetch(name: str) -> Path:
        return Path(
            hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        )

    folder = fetch(CONFIG_FILE).parent
    for name in WEIGHT_FILES:
        try:
            index = fetch(name)
        except EntryNotFoundError:
            continue
        except LocalEntryNotFoundError:
            if local_files_only and name != WEIGHT_FILES[-1]:
                continue  # not cached under this name; maybe under the next one
            raise
        if name.endswith(".index.json"):
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                fetch(shard)
        break
    else:
        raise CheckpointNotFoundError(f"hub repository {repo_id!r} has no {' or '.join(WEIGHT_FILES[:2])}")
    for name in OPTIONAL_FILES:
        with contextlib.suppress(EntryNotFoundError, LocalEntryNotFoundError):
            fetch(name)
    return folder


def read_config(folder: Path) -> PerceiverConfig:
    path = folder / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(f"{folder} has no {CONFIG_FILE}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    try:
        return PerceiverConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # an unpickler refusal or a corrupt file: never fall back
        raise CheckpointError(f"cannot read {path} with torch.load(weights_only=True): {exc}") from exc


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read_file(path)
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_file(folder / shard))
        return state
    raise CheckpointNotFoundError(f"{folder} has none of {', '.join(WEIGHT_FILES)}")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise StateDictMismatchError listing every missing, unexpected and mis-shaped key."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)}, model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(missing=missing, unexpected=unexpected, mismatched=mismatched)


def _finish(model: TaskModel, device: torch.device | str, dtype: torch.dtype) -> TaskModel:
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    if packing_supported(device, dtype):
        prepack_linears(model)
    return model


def load_pretrained(
    source: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> TaskModel:
    """The model a checkpoint folder (or hub id) describes, weights loaded strictly,
    in eval mode on `device` in `dtype`. The assembly follows config.json's architectures."""
    folder = resolve_source(source, revision=revision, cache_dir=cache_dir)
    config = read_config(folder)
    with torch.device("meta"):
        model = build_model(config)
    state = read_state_dict(folder)
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True, assign=True)
    return _finish(model, device, dtype)


def init_weights(model: nn.Module, *, std: float = 0.02, seed: int = 0) -> None:
    """Random weights as transformers initialises them: normal(0, std), zero biases,
    unit norm scales."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, std, generator=gen)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
                module.weight.fill_(1.0)
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()


def from_config(
    config: PerceiverConfig | dict[str, Any],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> TaskModel:
    """A randomly initialised model (deterministic in `seed`) for a config or config.json dict."""
    if not isinstance(config, PerceiverConfig):
        config = PerceiverConfig.from_dict(config)
    model = build_model(config)
    init_weights(model, std=config.initializer_range, seed=seed)
    return _finish(model, device, dtype)


def save_pretrained(model: TaskModel, folder: str | Path) -> Path:
    """Write config.json and model.safetensors, readable by load_pretrained and transformers."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True))
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / SAFETENSORS_FILE), metadata={"format": "pt"})
    return folder
