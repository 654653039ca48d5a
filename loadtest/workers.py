"""What the benchmarks share: random checkpoints, one measurement per subprocess, memory sampling.

Each implementation is measured in its own worker process (`python -m MODULE --worker ...`), so
its memory is its own and one that fails (transformers' multimodal model cannot run in bfloat16)
is recorded instead of ending the run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch


class PeakRSS:
    """Samples the process's resident memory every 2 ms; peak above the starting level."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def max_rss_mb() -> float:
    """This process's resident-memory high-water mark since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def make_checkpoint(config: dict[str, Any], folder: Path) -> str:
    """A random-weight checkpoint of `config` in `folder`, written once and reused after."""
    from model_core import from_config, save_pretrained

    if not (folder / "model.safetensors").exists():
        save_pretrained(from_config(config, seed=0), folder)
    return str(folder)


def spawn(module: str, args: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m MODULE --worker ARGS` (in `env`, else this process's environment); its last stdout line is
    a JSON object. A failure comes back as {"error": the last line of its stderr}."""
    command = [sys.executable, "-m", module, "--worker", *args]
    out = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    return dict(
        cpus=os.cpu_count(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        load_average=list(os.getloadavg()),
    )


def host() -> dict[str, Any]:
    """The machine a load run ran on: the CPU named (results differ with and without AMX), torch and its threads."""
    import torch

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
