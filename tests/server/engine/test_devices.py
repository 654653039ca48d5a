"""CPU thread setting: the configured count, else torch's (every core, or OMP_NUM_THREADS)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from server.engine.devices import configure_cpu_threads, cpu_threads, thread_options
from server.settings import build_settings


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_configured_count_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert cpu_threads(build_settings({"server": {"cpu_threads": 3}})) == 3


def test_omp_num_threads_is_left_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert cpu_threads(build_settings({})) == torch.get_num_threads()


def test_default_uses_every_core(monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for available in (1, 2, 8):
        torch.set_num_threads(available)
        assert cpu_threads(build_settings({})) == available


def test_configure_applies_it(restore_threads: None) -> None:
    assert configure_cpu_threads(build_settings({"server": {"cpu_threads": 1}})) == 1
    assert torch.get_num_threads() == 1


def test_bad_values_are_refused() -> None:
    from server.settings import SettingsError

    with pytest.raises(SettingsError, match="cpu_threads"):
        build_settings({"server": {"cpu_threads": 0}})


def test_cpu_models_choose_between_every_core_and_one() -> None:
    cpu, default = torch.device("cpu"), build_settings({})
    assert thread_options(cpu, default, 8) == (8, 4, 1)  # every core first; fewer where the batcher finds it faster
    assert thread_options(cpu, default, 3) == (3, 1) and thread_options(cpu, default, 2) == (2, 1)
    assert thread_options(cpu, default, 1) == (1,)
    assert thread_options(cpu, build_settings({"server": {"cpu_threads": 3}}), 3) == (3,)  # the override: fixed
    assert thread_options(torch.device("cuda", 0), default, 8) == ()  # host threads left alone
    assert thread_options(None, default, 8) == ()
