"""Where a body is parsed: inline, on a worker thread, or in the helper process, by its size; what crosses back."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from server.errors import ErrorCode, ServeError
from server.http.offload import INLINE_BYTES, Offload

pytestmark = pytest.mark.anyio


def where(body: bytes, tag: str = "") -> tuple[int, int, bool, str, int]:
    """(process, thread, torch imported?, tag, body size): run by the offload, here or in the helper."""
    return os.getpid(), threading.get_ident(), "torch" in sys.modules, tag, len(body)


def refuse(body: bytes) -> None:
    raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"{len(body)} bytes is too many", retry_after=3)


def die(body: bytes) -> None:
    os._exit(3)


@pytest.fixture
def offload() -> Offload:
    o = Offload(process_bytes=200_000)
    yield o
    o.close()


async def test_a_body_is_placed_by_its_size(offload: Offload) -> None:
    here = (os.getpid(), threading.get_ident())
    small = await offload.run(where, b"x" * INLINE_BYTES, "small")
    medium = await offload.run(where, b"x" * (INLINE_BYTES + 1), "medium")
    large = await offload.run(where, b"x" * 200_001, tag="large")
    assert small[:2] == here and small[3:] == ("small", INLINE_BYTES)
    assert medium[0] == here[0] and medium[1] != here[1]
    assert large[0] != here[0] and large[3:] == ("large", 200_001)
    assert not large[2], "the helper process imported torch"


async def test_a_declared_cost_overrides_the_size(offload: Offload) -> None:
    small_but_compressed = await offload.run(where, b"x" * 10, cost=300_000)
    assert small_but_compressed[0] != os.getpid()


async def test_errors_cross_back_intact(offload: Offload) -> None:
    for size in (10, 100_000, 300_000):
        with pytest.raises(ServeError) as info:
            await offload.run(refuse, b"x" * size)
        assert (info.value.code, info.value.message, info.value.retry_after) == (
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"{size} bytes is too many",
            3,
        )


async def test_a_helper_that_dies_costs_one_request(offload: Offload) -> None:
    with pytest.raises(ServeError) as info:
        await offload.run(die, b"x" * 300_000)
    assert info.value.code is ErrorCode.MODEL_UNAVAILABLE and info.value.status == 503
    assert (await offload.run(where, b"x" * 300_000))[0] != os.getpid()  # a new helper


def test_what_the_helper_runs_imports_no_model_code() -> None:
    """The body parsers the helper process imports (request bodies, the /v2 codec, the JSON scan) need no torch."""
    import subprocess

    code = (
        "import sys; import server.http.bodies, server.http.admission, server.v2.messages; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
