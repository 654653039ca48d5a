from __future__ import annotations

import time
from pathlib import Path

import pytest

from model_core.errors import CheckpointNotFoundError
from server.errors import ErrorCode, ServeError
from server.models.hub import _unavailable, download_failure, is_hub_id, locate, offline_variable
from server.settings import ModelSpec, Task


def spec(source: str) -> ModelSpec:
    return ModelSpec(name="lm", task=Task.FILL_MASK, source=source)


def test_hub_ids_and_paths(tmp_path: Path) -> None:
    assert is_hub_id("deepmind/language-perceiver")
    assert is_hub_id("gpt2")
    assert not is_hub_id(str(tmp_path))
    assert not is_hub_id("./checkpoints/mine")
    assert not is_hub_id("~/models/mine")
    assert not is_hub_id("a/b/c")
    assert not is_hub_id("bad name") and not is_hub_id("/gpt2")


def test_offline_and_not_cached_fails_fast_with_the_fix() -> None:
    started = time.monotonic()
    with pytest.raises(ServeError) as info:
        locate(spec("deepmind/language-perceiver-not-cached"))
    assert time.monotonic() - started < 5
    error = info.value
    assert error.code is ErrorCode.MODEL_UNAVAILABLE and error.status == 503
    for needle in (
        "'lm'",
        "deepmind/language-perceiver-not-cached",
        "perceiver-serve download lm",
        "HF_HUB_OFFLINE",
        "local folder",
    ):
        assert needle in error.message


def test_missing_local_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="does not exist") as info:
        locate(spec(str(tmp_path / "nope")))
    assert info.value.code is ErrorCode.MODEL_UNAVAILABLE


def test_local_folder_is_used_as_is(checkpoints: dict[str, Path]) -> None:
    assert locate(spec(str(checkpoints["mlm"]))) == checkpoints["mlm"]


def cache_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """A hub repository as huggingface_hub keeps it in its cache (refs/main -> snapshots/<commit>/...)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def sharded(folder: Path, shards: int = 3) -> dict[str, bytes]:
    """The files of a checkpoint folder with its weights split over `shards` safetensors files and an index."""
    import json

    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    names = sorted(state)
    files, weight_map = {"config.json": (folder / "config.json").read_bytes()}, {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[i::shards]}
        save_file(part, folder / shard)
        files[shard] = (folder / shard).read_bytes()
        weight_map |= dict.fromkeys(part, shard)
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return files


def test_a_sharded_hub_checkpoint_loads_from_the_cache(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One resolver (model_core's): the index and every shard are found in the cache, offline."""
    import shutil

    import torch

    from server.engine.loading import load_model
    from server.settings import Settings

    folder = tmp_path / "src"
    shutil.copytree(checkpoints["mlm"], folder)
    cache = tmp_path / "hub-cache"
    cache_snapshot(cache, "org/sharded-mlm", sharded(folder))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    located = locate(spec("org/sharded-mlm"))
    assert sorted(p.name for p in located.iterdir()) == sorted(sharded(folder))
    loaded = load_model(spec("org/sharded-mlm"), Settings())
    reference = load_model(spec(str(checkpoints["mlm"])), Settings())
    for (name, a), b in zip(loaded.module.state_dict().items(), reference.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_sharded_checkpoint_downloads_with_every_shard(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online, the server fetches what model_core's resolver fetches: the index, then every shard it names."""
    import shutil

    from huggingface_hub import constants

    from server.engine.loading import load_model
    from server.settings import Settings
    from tests.server.models.fakehub import fake_hub

    folder = tmp_path / "src"
    shutil.copytree(checkpoints["mlm"], folder)
    files = sharded(folder)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with fake_hub({"org/sharded-mlm": files}) as (endpoint, requested):
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        loaded = load_model(spec("org/sharded-mlm"), Settings())
    assert loaded.folder.name == "0123456789abcdef0123456789abcdef01234567"
    assert set(files) <= {p.name for p in loaded.folder.iterdir()}
    assert all(any(path.endswith(name) for path in requested) for name in files)


@pytest.mark.parametrize(
    "environ, named",
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE"),
        ({"TRANSFORMERS_OFFLINE": "1"}, "TRANSFORMERS_OFFLINE"),
        ({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}, None),  # huggingface_hub reads the first one present
        ({}, None),
    ],
)
def test_the_advice_names_only_what_is_set(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], named: str | None
) -> None:
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", named is not None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent/hub-cache")
    assert offline_variable() == named
    unavailable = _unavailable(spec("org/not-cached"), CheckpointNotFoundError("no connection"))
    message = unavailable.message
    assert "perceiver-serve download lm" in message
    if named:
        assert f"{named} is set" in message and f"unset {named}" in message
    else:
        assert "unset" not in message and "OFFLINE" not in message and "no connection" in message
    failure = download_failure(spec("org/not-cached"), _with_cause(unavailable))
    assert "perceiver-serve download" not in failure and "/nonexistent/hub-cache" in failure
    assert (f"unset {named}" in failure) if named else ("reachable" in failure and "unset" not in failure)


def _with_cause(error: ServeError) -> ServeError:
    error.__cause__ = CheckpointNotFoundError("no connection")
    return error
