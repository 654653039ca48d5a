"""Device and dtype resolution, placement by free memory, memory readings. Called at run time only."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from server.settings import ModelSpec, Settings, SettingsError, check_dtype

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _most_free_cuda() -> torch.device:
    free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    return torch.device("cuda", max(range(len(free)), key=free.__getitem__))


def resolve_device(spec: str) -> torch.device:
    """`auto` -> the visible CUDA device with the most free memory, else cpu; `cuda` -> the same, or an error."""
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SettingsError(f"device {spec!r} requested but no CUDA device is visible; use 'auto' or 'cpu'")
    if spec in ("auto", "cuda"):
        return _most_free_cuda()
    index = int(spec.split(":", 1)[1])
    if index >= torch.cuda.device_count():
        visible = torch.cuda.device_count()
        raise SettingsError(f"device {spec!r} requested but only {visible} CUDA device(s) are visible")
    return torch.device("cuda", index)


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto` -> bfloat16 on a CUDA device that supports it, float32 elsewhere."""
    if spec == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    check_dtype(spec, on_cpu=device.type == "cpu", where=f"device {device}", error=SettingsError)
    return _DTYPES[spec]


def device_kind(spec: ModelSpec, settings: Settings) -> str:
    """cpu or cuda: the kind of device `spec` lands on when it loads (known before it does)."""
    device = spec.device or settings.server.device
    return "cpu" if device == "cpu" or not torch.cuda.is_available() else "cuda"


def default_timeout_s(spec: ModelSpec | None, settings: Settings) -> float:
    """A request's deadline when its client asks for none: its model's default on the kind of device it lands on
    (within the X-Request-Timeout cap), else the server's request_timeout_s."""
    server = settings.server
    own = spec.timeout_s(device_kind(spec, settings)) if spec is not None else None
    return min(own, server.request_timeout_cap_s) if own else server.request_timeout_s


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_devices(settings: Settings) -> None:
    """Refuse, at start-up, device and dtype settings this machine cannot honour."""
    cuda = torch.cuda.is_available()
    for spec in (settings.server, *settings.models.values()):
        device = (spec.device if isinstance(spec, ModelSpec) else None) or settings.server.device
        if device.startswith("cuda") and (":" in device or not cuda):
            resolve_device(device)  # raises when that device is not visible
        where = f"model {spec.name!r}" if isinstance(spec, ModelSpec) else "[server]"
        check_dtype(
            (spec.dtype if isinstance(spec, ModelSpec) else None) or settings.server.dtype,
            on_cpu=device == "cpu" or (device == "auto" and not cuda),
            where=where,
            error=SettingsError,
        )


def cpu_threads(settings: Settings) -> int:
    """Intra-op threads for CPU inference: `[server] cpu_threads`; else torch's own choice (every core, or
    OMP_NUM_THREADS when set): the most a model's pass runs on (`thread_options`).

    `perceiver-serve` starts torch with a passive OpenMP wait policy (`server.cli`): idle workers sleep instead of
    spinning on the cores the event loop and other processes need. With the default spinning policy, each small op
    of a forward waited for a worker pushed off its core (a small model ran ~10x slower at 2 threads than at 1 on 2
    busy cores)."""
    if settings.server.cpu_threads is not None:
        return settings.server.cpu_threads
    return max(1, torch.get_num_threads())


def thread_options(device: torch.device | None, settings: Settings, threads: int) -> tuple[int, ...]:
    """The intra-op thread counts a model's batcher may run its passes on (`Batcher(threads=...)`): none on CUDA;
    `[server] cpu_threads` alone when set; else `threads` (every core), half of them, or one, the batcher keeping
    whichever runs a shape faster. Every core wins for large models (~1.8x on 2 cores); one wins for small ones,
    whose short ops cost more to wake the other threads for than they save and leave the event loop a core; half
    is there for mid-size models on many cores, and for models busy at once (BENCHMARKS.md)."""
    if device is None or device.type != "cpu":
        return ()
    if settings.server.cpu_threads is not None or threads <= 1:
        return (threads,)
    return tuple(dict.fromkeys((threads, max(1, threads // 2), 1)))


def configure_cpu_threads(settings: Settings) -> int:
    """Apply `cpu_threads(settings)` to this process (it is process-wide); returns it."""
    threads = cpu_threads(settings)
    torch.set_num_threads(threads)
    return threads


def _rss_bytes() -> int | None:
    try:
        with Path("/proc/self/statm").open() as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def memory_readings() -> list[tuple[str, str, int]]:
    """(device, kind, bytes): kind allocated/reserved/total per initialised CUDA device; cpu: rss and total (RAM)."""
    readings: list[tuple[str, str, int]] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            readings += [
                (f"cuda:{i}", "allocated", torch.cuda.memory_allocated(i)),
                (f"cuda:{i}", "reserved", torch.cuda.memory_reserved(i)),
                (f"cuda:{i}", "total", torch.cuda.mem_get_info(i)[1]),
            ]
    rss = _rss_bytes()
    if rss is not None:
        readings.append(("cpu", "rss", rss))
        readings.append(("cpu", "total", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")))
    return readings
