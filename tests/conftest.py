"""Fixtures for the whole suite."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from server.observability import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`logs.configure` (the CLI runs it) changes process-wide loggers: put them back after every test, so no test
    sees the levels or handlers another left behind."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    levels = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in logs.OWN_LOGGERS}
    handlers = {n: list(logging.getLogger(n).handlers) for n in logs.OWN_LOGGERS}
    access_disabled = logging.getLogger("uvicorn.access").disabled
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, (level, propagate) in levels.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers[name]
    logging.getLogger("uvicorn.access").disabled = access_disabled


@pytest.fixture(autouse=True)
def restore_torch_threads() -> Iterator[None]:
    """A CPU model's batcher sets its worker thread's intra-op threads, which also sets the default of threads
    started after it: put the suite's back after every test."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
