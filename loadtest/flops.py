"""What a route's requests cost in FLOPs, and what share of the machine's matmul peak the server reaches with them.

- `matmul_peak(dtype, threads)`: the machine's measured peak, FLOP/s of the fastest of several square matmuls
  (1024, 2048 and 4096 a side) on the server's intra-op threads.
- `route_flops(config, route, payloads)`: the FLOPs one request costs as the server runs it. The route is called
  in this process (the app, its batcher and runner) one request at a time, each forward pass under torch's
  flop formulas (matmuls, convolutions and attention; elementwise work is not counted), and the total is
  divided by the requests. One request at a time: the count a request assumes is its own shape's (its length
  bucket, its tiles, its decode passes), which a batch does not change.

The fraction of peak at saturation is then `req/s x FLOPs per request / peak` (`loadtest.run --flops`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

aten = torch.ops.aten

if aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry:

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        """CPU's fused attention, counted as torch counts the other fused kernels: two matmuls."""
        return sdpa_flop_count(query_shape, key_shape, value_shape)


if hasattr(torch.ops.mkldnn, "_linear_pointwise"):

    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _packed_linear_flop(x_shape: Any, w_shape: Any, *args: Any, **kwargs: Any) -> int:
        """A linear on a prepacked (oneDNN) weight, as model_core runs bfloat16 linears on CPU."""
        return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]


class FlopCount(TorchDispatchMode):
    """The FLOPs of every op run while open that torch's flop counter has a formula for (matmuls, convolutions,
    attention). `FlopCounterMode` without its per-module breakdown, whose hooks fail on some models' outputs
    under inference mode."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:  # a composite op (linear, matmul under inference mode): count what it is made of
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (matmuls, convolutions, attention)."""
    with FlopCount() as counter:
        fn()
    return counter.total


def matmul_peak(
    dtype: torch.dtype, threads: int, *, sizes: Sequence[int] = (1024, 2048, 4096), repeats: int = 5
) -> float:
    """FLOP/s of the fastest n x n matmul in `dtype` on `threads` intra-op threads, over `sizes` (`repeats` each,
    after a warm-up): the size at which a CPU's GEMM is at its best differs by CPU and dtype."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = 0.0
        for n in sizes:
            a, b = (torch.randn(n, n).to(dtype) for _ in range(2))
            out = torch.empty(n, n, dtype=dtype)
            torch.mm(a, b, out=out)  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                torch.mm(a, b, out=out)
                best = max(best, 2 * n**3 / (time.perf_counter() - start))
        return best
    finally:
        torch.set_num_threads(before)


@contextmanager
def counting_forwards() -> Iterator[list[int]]:
    """Every forward pass the batchers run while open, counted: yields the list their FLOP totals go to."""
    from server.engine.batching import Batcher

    totals: list[int] = []
    original = Batcher._execute

    def counted(self: Batcher, *args: Any) -> Any:
        with FlopCount() as counter:
            result = original(self, *args)
        totals.append(counter.total)
        return result

    Batcher._execute = counted  # type: ignore[method-assign]
    try:
        yield totals
    finally:
        Batcher._execute = original  # type: ignore[method-assign]


def route_flops(config: dict[str, Any], route: str, payloads: Sequence[Any], *, requests: int = 8) -> float:
    """Mean FLOPs per request of `route` over the first `requests` payloads, served by the app of `config`."""
    from server.app import build_app
    from server.engine.devices import configure_cpu_threads
    from server.settings import build_settings

    settings = build_settings(config)
    threads = torch.get_num_threads()
    configure_cpu_threads(settings)
    try:
        return asyncio.run(_count(build_app(settings), route, list(payloads)[:requests]))
    finally:
        torch.set_num_threads(threads)


async def _count(app: Any, route: str, payloads: list[Any]) -> float:
    from loadtest.inprocess import app_client, post_ok

    async with app_client(app) as client:
        await post_ok(client, route, **payloads[0].httpx_kwargs())  # loads the model; not counted
        with counting_forwards() as totals:
            for payload in payloads:
                await post_ok(client, payload.route, **payload.httpx_kwargs())
    return sum(totals) / len(payloads)


def peak_fractions(
    config: dict[str, Any], payloads: dict[str, list[Any]], rows: Sequence[Any], *, variant: str
) -> dict[str, Any]:
    """Per route: FLOPs per request, the best throughput `variant` reached in `rows` (its saturation), and the
    share of the machine's matmul peak (in the server's dtype, on its threads) that throughput is."""
    from server.engine.devices import cpu_threads, dtype_name, resolve_dtype
    from server.settings import build_settings

    settings = build_settings(config)
    threads = cpu_threads(settings)
    dtype = resolve_dtype(settings.server.dtype, torch.device("cpu"))
    peak = matmul_peak(dtype, threads)
    routes: dict[str, Any] = {}
    for route, route_payloads in payloads.items():
        best = max((r for r in rows if r.variant == variant and r.route == route), key=lambda r: r.rps, default=None)
        if best is None or not best.rps:
            continue
        flops = route_flops(config, route, route_payloads)
        routes[route] = {
            "gflop_per_request": flops / 1e9,
            "saturation_rps": best.rps,
            "concurrency": best.concurrency,
            "achieved_gflop_s": best.rps * flops / 1e9,
            "fraction_of_peak": best.rps * flops / peak,
        }
    return {
        "dtype": dtype_name(dtype),
        "threads": threads,
        "peak_gflop_s": peak / 1e9,
        "routes": routes,
    }
