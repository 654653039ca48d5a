"""Fixtures for the load-test tests: tiny random checkpoints and a server config over them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import CONFIGS

# Fill-mask batches fill within the delay at 4 clients; no-batching runs use max_batch_size 1.
LIMITS = {"max_batch_size": 4, "max_delay_ms": 50, "max_queue": 64}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """[models.*] tables over tiny random checkpoints of every task."""
    import torch

    from model_core import from_config, save_pretrained

    root = tmp_path_factory.mktemp("loadtest-checkpoints")
    tasks = {
        "mlm": "fill-mask",
        "sentiment": "text-classification",
        "conv": "image-classification",
        "flow": "optical-flow",
        "video": "video-autoencoding",
    }
    tables = {}
    for name, task in tasks.items():
        folder = save_pretrained(from_config(CONFIGS[name], device="cpu", dtype=torch.float32, seed=0), root / name)
        tables[name] = {"task": task, "source": str(folder), "random_weights": True, **LIMITS}
    return tables


@pytest.fixture(scope="session")
def tiny_config(tiny_models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"server": {"device": "cpu", "request_timeout_s": 60}, "models": tiny_models}


@pytest.fixture
def config_file(tmp_path: Path, tiny_config: dict[str, Any]) -> Path:
    from loadtest.servers import dump_toml

    path = tmp_path / "serve.toml"
    path.write_text(dump_toml(tiny_config))
    return path
