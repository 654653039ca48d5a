"""Route-level benchmark: the server's /optical-flow and /autoencode-video against transformers,
on the same weights (the real DeepMind configs, random, as bench_model writes them) and the same
request bytes. Each implementation runs in its own worker process; a failure is recorded.

Ours is the whole route, in-process through the app with its lifespan (httpx ASGI transport):
upload parsing, decoding, tiling or windowing, the model's batcher thread, encoding the answer.
Transformers is driven as its docs and the DeepMind colab drive it (loadtest.hf_routes), from
the same bytes, under torch.inference_mode:

- flow: per 368x496 tile of the colab's grid, `model(inputs=patches).logits * 20`, batch 1, blended
  with the pyramid weights. Frames: a textured image and a copy shifted by SHIFT.
- video-labels: ours `outputs=labels` (encode + the label query alone); transformers one forward
  with chunk 0's `subsampled_output_points`, the least its docs allow, label logits from it.
- video-recon: ours `outputs=reconstruction`; transformers the docs' loop over the 128 chunks.
  `--hf-chunks K` measures K chunks and extrapolates the loop x128/K (marked in the results).

Clips are sent as .npy at the model's size (16 x 224 x 224 x 3 uint8) so no resize dominates
(the route also takes other sizes and containers, centre-cropped and resized) + a 48 kHz WAV.
Agreement is checked on what both computed: max |flow difference| in pixels, top-1 label, and
the reconstructed chunks (video in uint8 levels as the route returns it, audio as floats).

    python -m loadtest.bench_routes --tasks flow,video-labels,video-recon --requests 3 --hf-chunks 4 \\
        --checkpoints bench-results/ckpt --out bench-results/routes.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loadtest.bench_model import REAL_CONFIGS
from loadtest.hf_routes import run_transformers
from loadtest.payloads import frame_pair
from loadtest.route_cases import SHIFT, SINTEL, TASKS, Case, Outputs, model_shapes, request_files, timings
from loadtest.workers import PeakRSS, machine, make_checkpoint, max_rss_mb, spawn

CHECKPOINTS = {"flow": "optical-flow", "video-labels": "video", "video-recon": "video"}  # bench_model's folders
ROUTES: dict[str, tuple[str, dict[str, str]]] = {
    "flow": ("/optical-flow", {"format": "npy"}),
    "video-labels": ("/autoencode-video", {"outputs": "labels", "top_k": "1"}),
    "video-recon": ("/autoencode-video", {"outputs": "reconstruction", "format": "npz"}),
}


# ---- ours: the server's route, in-process ---------------------------------------------------------


def run_ours(case: Case) -> tuple[dict[str, Any], Outputs]:
    from server.app import build_app
    from server.engine.devices import configure_cpu_threads
    from server.settings import build_settings

    task = "optical-flow" if case.task == "flow" else "video-autoencoding"
    settings = build_settings(
        {
            "server": {
                "device": "cpu",
                "dtype": case.dtype,
                "cpu_threads": case.threads,
                "request_timeout_s": 3600,
                "max_body_mb": 256,
                "catalog": False,
            },
            "models": {
                "bench": {
                    "task": task,
                    "source": case.folder,
                    "random_weights": True,
                    "max_batch_size": case.max_batch_size,
                    "max_queue": 1024,
                }
            },
        }
    )
    configure_cpu_threads(settings)  # as `python -m server` does
    return asyncio.run(_drive(build_app(settings), case))


async def _drive(app: Any, case: Case) -> tuple[dict[str, Any], Outputs]:
    from loadtest.inprocess import app_client, post_ok

    shapes = model_shapes(case)
    path, params = ROUTES[case.task]
    files = request_files(case, shapes)
    if case.task == "flow":  # warm-up (and model load): one pair of one tile
        height, width = shapes.flow_size
        pair = frame_pair(np.random.default_rng(1), width, height, SHIFT)
        warm = (
            path,
            params,
            {name: (f"{name}.png", data, "image/png") for name, data in zip(("frame1", "frame2"), pair, strict=True)},
        )
    else:  # warm-up (and model load): the labels of the clip
        warm = ("/autoencode-video", ROUTES["video-labels"][1], files)
    async with app_client(app) as client:

        async def post(route: str, query: dict[str, str], parts: dict[str, Any]) -> Any:
            return await post_ok(client, route, params=query, files=parts)

        await post(*warm)
        runs, last = [], None
        gc.collect()
        with PeakRSS() as mem:
            for concurrency in case.concurrency:
                latencies, wall_s, last = await _concurrent(
                    lambda: post(path, params, files), case.requests, concurrency
                )
                runs.append(timings(latencies, wall_s, concurrency))
        cost = await _cost(case, lambda: post(path, params, files)) if case.flops else {}
    assert last is not None
    return (
        dict(runs=runs, peak_delta_mb=mem.delta_mb, peak_rss_mb=max_rss_mb(), threads=torch.get_num_threads(), **cost),
        _parse(case.task, last.content),
    )


async def _cost(case: Case, send: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    """FLOPs of one more request (untimed: counting slows it), and the matmul peak to compare throughput with."""
    from loadtest.flops import counting_forwards, matmul_peak

    with counting_forwards() as totals:
        await send()
    peak = matmul_peak(getattr(torch, case.dtype), torch.get_num_threads())
    return {"gflop_per_request": sum(totals) / 1e9, "peak_gflop_s": peak / 1e9}


async def _concurrent(
    send: Callable[[], Awaitable[Any]], requests: int, concurrency: int
) -> tuple[list[float], float, Any]:
    """`requests` sends, `concurrency` in flight at a time: (latencies, wall time, the last answer)."""
    latencies: list[float] = []
    last: list[Any] = []
    todo = iter(range(requests))

    async def client() -> None:
        for _ in todo:  # one iterator shared by the clients: each request is sent once
            start = time.perf_counter()
            last[:] = [await send()]
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start, last[0]


def _parse(task: str, body: bytes) -> Outputs:
    if task == "flow":
        return {"flow": np.load(io.BytesIO(body), allow_pickle=False)}  # (H, W, 2)
    if task == "video-labels":
        [best] = json.loads(body)["windows"][0]["labels"]
        return {"label": np.array(best["label"]), "score": np.array(best["score"])}
    with np.load(io.BytesIO(body), allow_pickle=False) as npz:
        return {"video": npz["video"], "audio": npz["audio"]}  # (T, H, W, 3) uint8, (S,) float32


# ---- transformers: as its docs and the DeepMind colab drive it ------------------------------------


# ---- agreement --------------------------------------------------------------------------------------


def agreement(task: str, ours: Outputs, theirs: Outputs) -> dict[str, Any]:
    """How far apart the two answers are, on what both computed."""
    if task == "flow":
        return {
            "flow_max_abs_diff_px": float(np.abs(ours["flow"] - theirs["flow"]).max()),
            "flow_max_abs_px": float(np.abs(theirs["flow"]).max()),
        }
    if task == "video-labels":
        return {
            "top1_equal": bool(ours["label"] == theirs["label"]),
            "top1_score_abs_diff": float(abs(ours["score"] - theirs["score"])),
        }
    image, audio = theirs["image"], theirs["audio"]  # the first K chunks
    # The route returns uint8 video: transformers' raw RGB clipped and rounded the same way.
    levels = (np.clip(image, 0, 1) * 255).round().astype(np.int16)
    video = ours["video"].reshape(-1, 3)[: len(image)].astype(np.int16)
    return {
        "chunks_compared_image_points": len(image),
        "video_max_abs_diff_levels": int(np.abs(video - levels).max()),
        "audio_max_abs_diff": float(np.abs(ours["audio"][: len(audio)] - audio).max()),
    }


# ---- driver -----------------------------------------------------------------------------------------


RUNNERS = {"ours": run_ours, "transformers": run_transformers}


def _row(case: Case, ours: dict[str, Any], theirs: dict[str, Any], agree: dict[str, Any]) -> list[dict[str, Any]]:
    nan = float("nan")
    hf = theirs["runs"][0] if "runs" in theirs else {}
    notes = [f"{impl} failed: {r['error']}" for impl, r in (("ours", ours), ("transformers", theirs)) if "error" in r]
    if "extrapolated_from_chunks" in hf:
        notes.append(f"transformers extrapolated from {hf['extrapolated_from_chunks']} of {hf['chunks_total']} chunks")
    rows = []
    for run in ours.get("runs") or [{"concurrency": c} for c in case.concurrency]:
        ours_p50, hf_p50 = run.get("p50_s", nan), hf.get("p50_s", nan)
        ours_rps, hf_rps = run.get("requests_per_s", nan), hf.get("requests_per_s", nan)
        rows.append(
            dict(
                task=case.task,
                dtype=case.dtype,
                concurrency=run["concurrency"],
                requests=case.requests,
                ours_p50_s=ours_p50,
                ours_mean_s=run.get("mean_s", nan),
                ours_requests_per_s=ours_rps,
                transformers_p50_s=hf_p50,
                transformers_requests_per_s=hf_rps,
                latency_ratio=ours_p50 / hf_p50,
                throughput_ratio=ours_rps / hf_rps,
                ours_peak_rss_mb=ours.get("peak_rss_mb", nan),
                transformers_peak_rss_mb=theirs.get("peak_rss_mb", nan),
                ours_peak_delta_mb=ours.get("peak_delta_mb", nan),
                transformers_peak_delta_mb=theirs.get("peak_delta_mb", nan),
                threads=case.threads,
                ours_gflop_per_request=ours.get("gflop_per_request", nan),
                ours_fraction_of_peak=ours_rps * ours.get("gflop_per_request", nan) / ours.get("peak_gflop_s", nan),
                tiles=theirs.get("tiles"),
                agreement=agree,
                note="; ".join(notes),
            )
        )
    return rows


def _agreement_text(agree: dict[str, Any]) -> str:
    if "flow_max_abs_diff_px" in agree:
        return f"max|dflow| {agree['flow_max_abs_diff_px']:.2e} px"
    if "top1_equal" in agree:
        return f"top-1 {'same' if agree['top1_equal'] else 'DIFFERENT'} (dscore {agree['top1_score_abs_diff']:.1e})"
    if "video_max_abs_diff_levels" in agree:
        return f"video max|d| {agree['video_max_abs_diff_levels']} levels, audio {agree['audio_max_abs_diff']:.1e}"
    return agree.get("error", "-")


def _print(row: dict[str, Any]) -> None:
    print(
        f"{row['task']:12s} {row['dtype']:9s} c={row['concurrency']} ours {row['ours_p50_s']:8.2f}s "
        f"{row['ours_requests_per_s']:7.4f} req/s  transformers {row['transformers_p50_s']:8.2f}s "
        f"{row['transformers_requests_per_s']:7.4f} req/s  latency x{row['latency_ratio']:.2f}  "
        f"throughput x{row['throughput_ratio']:.2f}  peak RSS {row['ours_peak_rss_mb']:6.0f} / "
        f"{row['transformers_peak_rss_mb']:6.0f} MB  {_agreement_text(row['agreement'])}  "
        f"{row['ours_gflop_per_request']:.0f} GFLOP/request, {row['ours_fraction_of_peak']:.0%} of matmul peak  "
        f"{row['note']}",
        flush=True,
    )


def compare(case: Case, workdir: Path) -> list[dict[str, Any]]:
    """Both implementations on `case`, each in its own process; the rows for the table."""
    results, outputs = {}, {}
    for impl in RUNNERS:
        path = workdir / f"{case.task}-{case.dtype}-{impl}.npz"
        results[impl] = spawn("loadtest.bench_routes", [impl, case.to_json(), str(path)])
        if "error" not in results[impl]:
            with np.load(path, allow_pickle=False) as npz:
                outputs[impl] = dict(npz)
    agree = (
        agreement(case.task, outputs["ours"], outputs["transformers"])
        if len(outputs) == 2
        else {"error": "not compared: a side failed"}
    )
    return _row(case, results["ours"], results["transformers"], agree)


def _worker(impl: str, case_json: str, outputs_path: str) -> None:
    torch.manual_seed(0)
    metrics, outputs = RUNNERS[impl](Case.from_json(case_json))
    np.savez(outputs_path, **outputs)
    print(json.dumps(metrics))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--dtypes", default="float32")
    p.add_argument("--requests", type=int, default=3, help="measured requests per run (after one warm-up)")
    p.add_argument("--concurrency", default="1,2", help="ours: requests in flight, one run each")
    p.add_argument("--hf-chunks", type=int, default=4, help="transformers video-recon chunks measured (of 128)")
    p.add_argument("--flow-size", default=f"{SINTEL[0]}x{SINTEL[1]}", help="HxW of the frame pair")
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads for both (the server's own default is one fewer than the cores)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=Case.max_batch_size,
        help="ours: the model's batch limit (a 368x496 flow tile takes ~1.1 GB in float32 on CPU)",
    )
    p.add_argument("--flops", action="store_true", help="ours: FLOPs per request and the share of matmul peak")
    p.add_argument("--checkpoints", default=None, help="folder for the random checkpoints (default: temp)")
    p.add_argument("--out", default="bench-results/routes.json")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        _worker(*a.worker)
        return
    root = Path(a.checkpoints or tempfile.mkdtemp(prefix="perceiver-bench-"))
    height, width = (int(v) for v in a.flow_size.lower().split("x"))
    rows, before = [], machine()
    print(
        f"{before['cpus']} CPUs, torch {before['torch']}, {a.threads} intra-op threads both sides, load average "
        f"{before['load_average'][0]:.2f}; p50 latency over {a.requests} requests, c = ours' requests in flight "
        "(transformers: sequential); peak RSS of each worker process; ratios are ours / transformers",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="perceiver-routes-") as workdir:
        for task in a.tasks.split(","):
            folder = make_checkpoint(REAL_CONFIGS[CHECKPOINTS[task]], root / CHECKPOINTS[task])
            for dtype in a.dtypes.split(","):
                case = Case(
                    task,
                    folder,
                    dtype,
                    a.requests,
                    tuple(int(c) for c in a.concurrency.split(",")),
                    a.hf_chunks,
                    (height, width),
                    a.threads,
                    a.max_batch_size,
                    a.flops,
                )
                for row in compare(case, Path(workdir)):
                    rows.append(row)
                    _print(row)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(
        json.dumps(dict(machine=before, load_average_after=machine()["load_average"], rows=rows), indent=2)
    )


if __name__ == "__main__":
    main()
