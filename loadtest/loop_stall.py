"""How long large request bodies stall the event loop: /health/live latency while ~30 MB bodies are sent.

    python -m loadtest.loop_stall [--mb 30] [--repeats 3] [--out bench-results/loop-stall.json]

Starts a server with the small random models, then for each case sends its body a few times while a second
client polls `/health/live` every 5 ms, and reports the probe's worst and median latency during the uploads
(and the route's status). A probe answered late means the event loop was busy: parsing JSON, inflating base64
or building an answer there. Loopback only; the bodies are built in memory.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from loadtest.servers import serve, write_model_set

Body = tuple[str, dict[str, str], bytes]  # (path, headers, content)


def _json(path: str, value: Any) -> Body:
    return path, {"Content-Type": "application/json"}, json.dumps(value).encode()


def cases(mb: float) -> dict[str, Callable[[], Body]]:
    """Bodies of about `mb` MB that are expensive to parse: many small JSON values, or long base64 fields."""
    size = int(mb * 2**20)
    many = size // 10  # JSON strings of ~10 bytes each

    def multipart() -> Body:
        half = b"\x89PNG" + b"\0" * (size // 2)
        boundary = "loop-stall-boundary"
        parts = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"; filename="{n}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + half
            + b"\r\n"
            for n in ("frame1", "frame2")
        )
        return (
            "/optical-flow",
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            parts + f"--{boundary}--\r\n".encode(),
        )

    picture = base64.b64encode(b"\x89PNG" + b"\1" * (size * 3 // 4)).decode()
    half_picture = picture[: len(picture) // 2 // 4 * 4]
    return {
        "fill-mask, 3M short texts": lambda: _json("/fill-mask", {"inputs": ["a[MASK]"] * many}),
        "classify-text, 3M short texts": lambda: _json("/classify-text", {"inputs": ["abc"] * many}),
        "classify-image, base64 JSON": lambda: _json("/classify-image", {"inputs": picture}),
        "optical-flow, base64 JSON": lambda: _json("/optical-flow", {"frame1": half_picture, "frame2": half_picture}),
        "optical-flow, multipart": multipart,
        "v2 infer, 3M BYTES elements": lambda: _json(
            "/v2/models/small-fill-mask/infer",
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [many], "data": ["a[MASK]"] * many}]},
        ),
    }


def measure(base: str, body: Body, *, repeats: int) -> dict[str, Any]:
    path, headers, content = body
    latencies: list[float] = []
    statuses: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get("/health/live")
                latencies.append(time.perf_counter() - started)
                time.sleep(0.005)

    with httpx.Client(base_url=base, timeout=120) as client:
        client.get("/health/live")
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        time.sleep(0.2)
        for _ in range(repeats):
            statuses.append(client.post(path, content=content, headers=headers).status_code)
        stop.set()
        prober.join()
    return {
        "body_mb": round(len(content) / 2**20, 1),
        "statuses": sorted(set(statuses)),
        "probe_max_ms": round(max(latencies) * 1000, 1),
        "probe_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "probes": len(latencies),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.loop_stall", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mb", type=float, default=30.0, help="body size per request")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoints", type=Path, default=Path("bench-results/loadtest/checkpoints"))
    p.add_argument("--out", type=Path, default=Path("bench-results/loop-stall.json"))
    args = p.parse_args()
    models = write_model_set("small", args.checkpoints)
    config = {"server": {"device": "cpu", "max_body_mb": args.mb + 8}, "models": models}
    results = {}
    with serve(config, workdir=args.out.parent / "loop-stall-server", name="loop-stall") as server:
        for name, build in cases(args.mb).items():
            results[name] = measure(server.url, build(), repeats=args.repeats)
            print(f"{name:34s} {results[name]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
