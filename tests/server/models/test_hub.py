from __future__ import annotations

import time
from pathlib import Path

import pytest

from server.errors import ErrorCode, ServeError
from server.models.hub import is_hub_id, locate
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


def test_offline_and_not_cached_fails_fast_with_the_fix() -> None:
    started = time.monotonic()
    with pytest.raises(ServeError) as info:
        locate(spec("deepmind/language-perceiver-not-cached"))
    assert time.monotonic() - started < 5
    error = info.value
    assert error.code is ErrorCode.MODEL_UNAVAILABLE and error.status == 503
    for needle in ("'lm'", "deepmind/language-perceiver-not-cached", "perceiver-serve download lm",
                   "HF_HUB_OFFLINE", "local folder"):
        assert needle in error.message


def test_missing_local_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="does not exist") as info:
        locate(spec(str(tmp_path / "nope")))
    assert info.value.code is ErrorCode.MODEL_UNAVAILABLE


def test_local_folder_is_used_as_is(checkpoints: dict[str, Path]) -> None:
    assert locate(spec(str(checkpoints["mlm"]))) == checkpoints["mlm"]
