"""Model-level benchmark: model_core against transformers on the same weights and inputs.

Each assembly is built at its real DeepMind config with random weights, saved once, and
loaded by both implementations in separate worker processes (so peak memory is each
one's own). Reports latency and peak resident memory during the forward, as ratios.

    python -m loadtest.bench_model                      # everything (long on a 2-core CPU)
    python -m loadtest.bench_model --tasks fill-mask --dtypes float32,bfloat16
    python -m loadtest.bench_model --tasks video --hf-chunks 4   # extrapolates transformers' 128-chunk loop
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from loadtest.workers import PeakRSS, machine, make_checkpoint, spawn
from model_core.presets import preset_config

# The published DeepMind configurations (model_core presets); weights are random.
REAL_CONFIGS = {
    task: preset_config(name)
    for task, name in {
        "fill-mask": "language-perceiver",
        "image-conv": "vision-perceiver-conv",
        "optical-flow": "optical-flow-perceiver",
        "video": "multimodal-perceiver",
    }.items()
}
TEXT = (
    "Perceiver IO is a general-purpose architecture that handles data from arbitrary settings "
    "while scaling linearly with the size of inputs and outputs. This sentence is about two hundred bytes."
)
MASK_SPAN = (88, 98)  # ~10 masked bytes


def _fill_mask_inputs(batch: int):
    from model_core.tokenizer import MASK_ID, ByteTokenizer

    ids = ByteTokenizer().encode(TEXT)
    start, stop = MASK_SPAN
    ids[start:stop] = [MASK_ID] * (stop - start)
    positions = torch.arange(start, stop)
    return [ids] * batch, positions


def _worker(
    task: str, impl: str, dtype_name: str, batch: int, folder: str, repeats: int, hf_chunks: int, flops: bool = False
) -> dict:
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    if impl == "ours":
        from model_core import load_pretrained

        model = load_pretrained(folder, dtype=dtype)
    else:
        import transformers

        arch = REAL_CONFIGS[task]["architectures"][0]
        model = getattr(transformers, arch).from_pretrained(folder, dtype=dtype).eval()
    extra: dict = {}
    run = _call(task, impl, model, batch, dtype, hf_chunks, extra)
    with torch.inference_mode():
        run()  # warm-up
        times, peaks = [], []
        for _ in range(repeats):
            gc.collect()
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                out = run()
                times.append(time.perf_counter() - t0)
            peaks.append(mem.delta_mb)
            del out
        cost = _cost(run, dtype, 128 / hf_chunks if "extrapolated_from_chunks" in extra else 1) if flops else {}
    latency = min(times)
    if "extrapolated_from_chunks" in extra:
        latency *= 128 / hf_chunks
    if cost:
        cost["fraction_of_peak"] = cost["gflop"] / latency / cost["peak_gflop_s"]
    return dict(latency_s=latency, peak_mb=max(peaks), **cost, **extra)


def _call(task: str, impl: str, model: Any, batch: int, dtype: torch.dtype, hf_chunks: int, extra: dict) -> Any:
    """The call measured: `impl`'s forward on the task's inputs, as its docs drive it."""
    g = torch.Generator().manual_seed(0)
    if task == "fill-mask":
        from model_core.tokenizer import ByteTokenizer

        batch_ids, positions = _fill_mask_inputs(batch)
        if impl == "ours":
            ids, mask = ByteTokenizer().pad(batch_ids)  # a length bucket (256 here)
            run = lambda: model(ids, mask, positions.expand(batch, -1)).logits
        else:
            ids, mask = ByteTokenizer().pad(batch_ids, length=2048)  # as transformers' docs pad
            run = lambda: model(inputs=ids, attention_mask=mask).logits[:, positions]
    elif task == "image-conv":
        images = torch.randn(batch, 3, 224, 224, generator=g).to(dtype)
        run = lambda: model(inputs=images).logits
    elif task == "optical-flow":
        pair = torch.randn(batch, 2, 27, 368, 496, generator=g).to(dtype)
        run = lambda: model(inputs=pair).logits
    else:  # video: full 16-frame reconstruction, 128 chunks
        from model_core.chunking import output_chunks, reconstruct

        inputs = dict(
            image=torch.rand(batch, 16, 3, 224, 224, generator=g).to(dtype),
            audio=(torch.rand(batch, 30720, 1, generator=g) * 2 - 1).to(dtype),
            label=torch.zeros(batch, 700, dtype=dtype),
        )
        chunks = output_chunks(num_chunks=128, image_points=16 * 224 * 224, audio_points=1920)
        if impl == "ours":
            run = lambda: reconstruct(model, model.encode(inputs), chunks, chunks_per_pass=16)
        else:
            measured = chunks[:hf_chunks]
            run = lambda: [model(inputs=inputs, subsampled_output_points=c).logits for c in measured]
            extra["extrapolated_from_chunks"] = hf_chunks
    return run


def _cost(run: Any, dtype: torch.dtype, scale: float) -> dict[str, float]:
    """FLOPs of one more call (counted, untimed; x `scale` where the timing is extrapolated) and the matmul peak."""
    from loadtest.flops import count_flops, matmul_peak

    return {"gflop": count_flops(run) * scale / 1e9, "peak_gflop_s": matmul_peak(dtype, torch.get_num_threads()) / 1e9}


def _spawn(args: list[str]) -> dict:
    """One measurement in its own process; a failure is recorded (transformers' multimodal
    model, for one, cannot run in bfloat16), not fatal to the run."""
    result = spawn("loadtest.bench_model", args)
    return {"latency_s": float("nan"), "peak_mb": float("nan"), **result} if "error" in result else result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="fill-mask,image-conv,optical-flow,video")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hf-chunks", type=int, default=4, help="transformers video chunks measured (of 128)")
    p.add_argument("--checkpoints", default=None, help="folder for the random checkpoints (default: temp)")
    p.add_argument("--out", default="bench-results/model.json")
    p.add_argument("--flops", action="store_true", help="FLOPs per call and the share of the dtype's matmul peak")
    p.add_argument("--worker", nargs=8, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        task, impl, dtype, batch, folder, repeats, hf_chunks, flops = a.worker
        result = _worker(task, impl, dtype, int(batch), folder, int(repeats), int(hf_chunks), flops == "1")
        print(json.dumps(result))
        return
    root = Path(a.checkpoints or tempfile.mkdtemp(prefix="perceiver-bench-"))
    rows = []
    for task in a.tasks.split(","):
        folder = make_checkpoint(REAL_CONFIGS[task], root / task)
        batches = a.batches.split(",") if task in ("fill-mask", "image-conv") else ["1"]
        for dtype in a.dtypes.split(","):
            for batch in batches:
                res = {
                    impl: _spawn(
                        [task, impl, dtype, batch, folder, str(a.repeats), str(a.hf_chunks), str(int(a.flops))]
                    )
                    for impl in ("ours", "transformers")
                }
                row = dict(
                    task=task,
                    dtype=dtype,
                    batch=int(batch),
                    ours_s=res["ours"]["latency_s"],
                    transformers_s=res["transformers"]["latency_s"],
                    latency_ratio=res["ours"]["latency_s"] / res["transformers"]["latency_s"],
                    ours_peak_mb=res["ours"]["peak_mb"],
                    transformers_peak_mb=res["transformers"]["peak_mb"],
                    memory_ratio=res["ours"]["peak_mb"] / max(res["transformers"]["peak_mb"], 1e-9),
                    **{
                        f"{impl}_{k}": r[k]
                        for impl, r in res.items()
                        for k in ("gflop", "fraction_of_peak", "peak_gflop_s")
                        if k in r
                    },
                    note="; ".join(
                        [f"{impl} failed: {r['error']}" for impl, r in res.items() if "error" in r]
                        + [
                            f"transformers extrapolated from {r['extrapolated_from_chunks']} of 128 chunks"
                            for r in res.values()
                            if "extrapolated_from_chunks" in r
                        ]
                    ),
                )
                rows.append(row)
                print(
                    f"{task:13s} {dtype:9s} b={batch:2s} ours {row['ours_s']:8.3f}s  transformers "
                    f"{row['transformers_s']:8.3f}s  latency x{row['latency_ratio']:.2f}  peak "
                    f"{row['ours_peak_mb']:8.0f} / {row['transformers_peak_mb']:8.0f} MB  "
                    f"memory x{row['memory_ratio']:.2f} {_peak_text(row)}{row['note']}",
                    flush=True,
                )
    if "fill-mask" in a.tasks and "bfloat16" in a.dtypes:
        rows.append(dict(task="fill-mask", metric="bf16_top1_agreement", value=_bf16_agreement(root)))
        print(f"fill-mask bfloat16 top-1 agreement with float32: {rows[-1]['value']:.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(machine=machine(), rows=rows), indent=2))


def _peak_text(row: dict[str, Any]) -> str:
    if "ours_gflop" not in row:
        return ""
    theirs = row.get("transformers_fraction_of_peak", float("nan"))
    return (
        f"{row['ours_gflop']:.1f} / {row.get('transformers_gflop', float('nan')):.1f} GFLOP, "
        f"{row['ours_fraction_of_peak']:.0%} / {theirs:.0%} of the {row['ours_peak_gflop_s']:.0f} GFLOP/s peak "
    )


def _bf16_agreement(root: Path) -> float:
    """Share of masked positions whose argmax byte is the same in bfloat16 and float32."""
    from model_core import load_pretrained
    from model_core.tokenizer import ByteTokenizer

    folder = root / "fill-mask"
    _, positions = _fill_mask_inputs(1)
    texts = [TEXT[i:] + TEXT[:i] for i in range(0, 200, 25)]
    tok = ByteTokenizer()
    agree = total = 0
    for dtype in (torch.float32, torch.bfloat16):
        model = load_pretrained(folder, dtype=dtype)
        batch = []
        for t in texts:
            ids = tok.encode(t)
            ids[MASK_SPAN[0] : MASK_SPAN[1]] = [3] * (MASK_SPAN[1] - MASK_SPAN[0])
            batch.append(ids)
        ids, mask = tok.pad(batch)
        with torch.inference_mode():
            top = model(ids, mask, positions.expand(len(texts), -1)).logits.float().argmax(-1)
        if dtype == torch.float32:
            ref = top
        else:
            agree, total = int((top == ref).sum()), ref.numel()
        del model
    return agree / total


if __name__ == "__main__":
    main()
