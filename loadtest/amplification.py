"""What small hostile requests cost a real server: status, time and peak memory growth per request.

    python -m loadtest.amplification [--out bench-results/amplification.json]

Starts a server with the small random models (default limits) and sends, one at a time, requests built to
make the answer or the decoding far larger than the request: hundreds of [MASK]s with a large top_k, many
large images in one /v2 tensor, an audio header declaring an absurd sample rate, a long 1080p clip. For each
it resets the server's peak-RSS mark (Linux: /proc/PID/clear_refs) and reports how far the peak rose above
the resident memory before the request. Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtest.hostile import png_bomb, video_file, wav_claiming
from loadtest.servers import serve, write_model_set

Request = dict[str, Any]  # httpx.Client.post keyword arguments, and "url"


def _npy(frames: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, frames)
    return buffer.getvalue()


def cases() -> dict[str, Callable[[], Request]]:
    def fill_mask() -> Request:
        return {"url": "/fill-mask", "json": {"inputs": ["[MASK]" * 250] * 5, "parameters": {"top_k": 262}}}

    def many_images() -> Request:
        picture = base64.b64encode(png_bomb(4000)).decode()
        return {
            "url": "/v2/models/small-vision-conv/infer",
            "json": {
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [16], "data": [picture] * 16}],
                "outputs": [{"name": "labels"}],
            },
        }

    def audio_rate() -> Request:
        clip = _npy(np.zeros((2, 16, 16, 3), np.uint8))
        return {
            "url": "/autoencode-video",
            "files": {
                "video": ("clip.npy", clip, "application/octet-stream"),
                "audio": ("a.wav", wav_claiming(2_000_000), "audio/wav"),
            },
        }

    def long_clip() -> Request:  # a moving gradient: a few MB as mp4, 300 MB of pixels decoded
        ramp = (np.arange(1920)[None, :] + np.arange(1080)[:, None]) % 256
        frames = np.stack([np.repeat(((ramp + 8 * t) % 256)[..., None], 3, axis=2) for t in range(48)]).astype(np.uint8)
        return {"url": "/autoencode-video", "files": {"video": ("clip.mp4", video_file("mp4", frames), "video/mp4")}}

    return {
        "fill-mask: 5 texts x 250 [MASK]s, top_k 262": fill_mask,
        "v2 classify-image: 16 PNGs of 4000x4000 in one tensor": many_images,
        "autoencode-video: a WAV header declaring 2 MHz": audio_rate,
        "autoencode-video: 48 frames of 1080p mp4": long_clip,
    }


def _kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1])


def measure(base: str, pid: int, request: Request) -> dict[str, Any]:
    url = request.pop("url")
    body_bytes = (
        len(json.dumps(request["json"]))
        if "json" in request
        else sum(len(part[1]) for part in request["files"].values())
    )
    with httpx.Client(base_url=base, timeout=600) as client:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak mark restarts from the current RSS
        before = _kib(pid, "VmRSS")
        started = time.perf_counter()
        response = client.post(url, **request)
        seconds = time.perf_counter() - started
        growth = _kib(pid, "VmHWM") - before
    return {
        "status": response.status_code,
        "request_kb": round(body_bytes / 1024, 1),
        "answer_kb": round(len(response.content) / 1024, 1),
        "seconds": round(seconds, 2),
        "peak_rss_growth_mb": round(growth / 1024),
        "message": _message(response),
    }


def _message(response: httpx.Response) -> str:
    if response.status_code < 400:
        return ""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError):
        return response.text[:200]
    return (error if isinstance(error, str) else error["message"])[:200]


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.amplification",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoints", type=Path, default=Path("bench-results/loadtest/checkpoints"))
    p.add_argument("--out", type=Path, default=Path("bench-results/amplification.json"))
    args = p.parse_args()
    config = {"server": {"device": "cpu"}, "models": write_model_set("small", args.checkpoints)}
    results = {}
    with serve(config, workdir=args.out.parent / "amplification-server", name="amplification") as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:  # warm every model up once
            client.post("/fill-mask", json={"inputs": "a[MASK]"})
            small = base64.b64encode(png_bomb(300)).decode()
            client.post(
                "/v2/models/small-vision-conv/infer",
                json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [16], "data": [small] * 16}]},
            )
            client.post("/autoencode-video", files={"video": ("c.npy", _npy(np.zeros((2, 16, 16, 3), np.uint8)))})
        for name, build in cases().items():
            results[name] = measure(server.url, server.pid, build())
            print(f"{name:55s} {results[name]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
