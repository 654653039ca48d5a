"""The default CPU thread policy under full load: every core computes, and the event loop still answers probes.

A real `python -m server` process (start-up sets the OpenMP wait policy and the threads) serves a mid-size masked
LM to closed-loop clients that keep every core busy; /health/live is probed meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from model_core.presets import preset_config

# Big enough that a forward, not the per-request overhead, fills the cores; small enough to write in a second.
MID_TEXT = preset_config(
    "language-perceiver-small",
    num_latents=128,
    d_latents=256,
    num_self_attends_per_block=4,
    num_self_attention_heads=4,
    d_model=64,
    qk_channels=128,
    v_channels=256,
)


def test_liveness_answers_within_100ms_while_the_model_saturates_every_core(
    spawn_server: Callable[..., str], toml_writer, tmp_path: Path
) -> None:
    from model_core import from_config, save_pretrained

    folder = save_pretrained(from_config(MID_TEXT, seed=0), tmp_path / "mid")
    models = {"mid": {"task": "fill-mask", "source": str(folder), "max_batch_size": 8, "max_delay_ms": 2}}
    config = toml_writer(tmp_path / "serve.toml", {"server": {"device": "cpu"}, "models": models})
    base = spawn_server("--config", str(config), "--preload", "mid", "--log-level", "warning")
    stop, answered, failures = threading.Event(), [0], []

    def client(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            while not stop.is_set():
                text = f"Client {i} asks about [MASK][MASK] " + "and more words " * (i % 8 + 4)
                response = http.post("/fill-mask", json={"inputs": text})
                if response.status_code != 200:
                    failures.append(response.status_code)
                answered[0] += 1

    clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(1.5)  # every client has a request in flight; the batcher runs back to back
        probes = []
        with httpx.Client(base_url=base, timeout=5) as http:
            for _ in range(20):
                began = time.monotonic()
                assert http.get("/health/live").status_code == 200
                probes.append(time.monotonic() - began)
                time.sleep(0.1)
        busy = answered[0]
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
    assert not failures and busy > 0
    probes.sort()
    # The machine may be shared (CI runs other tests beside this one): one probe in ten may catch a hiccup that
    # is no server's, but most answer within 100 ms, and none takes a second.
    assert probes[int(len(probes) * 0.9) - 1] < 0.1, [round(p, 3) for p in probes]
    assert probes[-1] < 1.0, [round(p, 3) for p in probes]
