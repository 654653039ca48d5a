"""POST /optical-flow?async=true as a background job (progress in tiles, on either job store), and flow batches
sized by the activation-memory budget (flow_budget_mb)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from model_core import load_pretrained
from server.app import build_app
from server.engine.loading import LoadedModel, load_model
from server.settings import ModelSpec, Settings
from server.tasks.optical_flow import OpticalFlowRunner
from tests.server.support import assert_error, open_client, with_forward
from tests.server.tasks.test_optical_flow import frames, npy, upload

pytestmark = pytest.mark.anyio
FOUR_TILES = (60, 70)  # cut in 2 x 2 tiles of 48x64


@pytest.fixture(params=["in-process", "redis"])
def store_table(request: pytest.FixtureRequest) -> dict[str, Any]:
    """[server] keys choosing the job store."""
    if request.param == "in-process":
        return {}
    return {"jobs_url": request.getfixturevalue("redis_url")}


def flow_settings(make_settings: Callable[..., Settings], source: Path, **server: Any) -> Settings:
    table = {"task": "optical-flow", "source": str(source), "max_batch_size": 1, "max_delay_ms": 0}
    return make_settings(server=server, models={"flow": table})


def slowed(delay_s: float) -> Callable[[ModelSpec, Settings], LoadedModel]:
    """A loader whose flow batches each take `delay_s` more: progress can be seen between tiles."""

    def load(spec: ModelSpec, settings: Settings) -> LoadedModel:
        loaded = load_model(spec, settings)

        def slow(batch: Any, forward: Callable[[Any], Any]) -> Any:
            time.sleep(delay_s)
            return forward(batch)

        return dataclasses.replace(loaded, runner=with_forward(loaded.runner, slow))

    return load


async def finished(client: httpx.AsyncClient, location: str) -> tuple[dict[str, Any], list[int]]:
    seen = []
    while (info := (await client.get(location)).json())["status"] not in ("done", "failed"):
        seen.append(info["progress"]["done"])
        await asyncio.sleep(0.02)
    return info, seen


async def test_a_flow_job_counts_tiles_and_answers_as_the_route(
    make_settings: Callable[..., Settings], checkpoints, store_table: dict[str, Any]
) -> None:
    pair = frames(*FOUR_TILES, seed=3)
    delay_s = 0.3 if store_table else 0.05  # Redis's progress is written at most every 0.5 s
    app = build_app(flow_settings(make_settings, checkpoints["flow"], **store_table), loader=slowed(delay_s))
    async with open_client(app) as client:
        accepted = await client.post("/optical-flow?async=true&format=flo", **upload(*pair))
        assert accepted.status_code == 202, accepted.text
        location = accepted.headers["location"]
        assert accepted.json()["kind"] == "optical-flow" and accepted.json()["progress"] == {"done": 0, "total": 4}
        info, seen = await finished(client, location)
        assert info["status"] == "done" and info["progress"] == {"done": 4, "total": 4}
        assert seen == sorted(seen) and any(0 < s < 4 for s in seen)  # counted tile by tile
        result = await client.get(f"{location}/result")
        direct = await client.post("/optical-flow?format=flo", **upload(*pair))
        assert result.status_code == 200 and result.headers["content-type"] == direct.headers["content-type"]
        assert result.content == direct.content
        assert result.headers["x-items"] == "4"


async def test_prefer_respond_async_and_the_accept_header_are_kept(
    make_settings: Callable[..., Settings], checkpoints
) -> None:
    pair = frames(48, 64, seed=4)  # one tile
    async with open_client(build_app(flow_settings(make_settings, checkpoints["flow"]))) as client:
        headers = {"Prefer": "respond-async", "Accept": "application/x-npy"}
        accepted = await client.post("/optical-flow", **upload(*pair), headers=headers)
        assert accepted.status_code == 202 and accepted.headers["preference-applied"] == "respond-async"
        info, _ = await finished(client, accepted.headers["location"])
        assert info["progress"] == {"done": 1, "total": 1}
        result = await client.get(f"{accepted.headers['location']}/result")
        direct = await client.post("/optical-flow", **upload(*pair))
    assert np.array_equal(npy(result), npy(direct))


async def test_bad_frames_are_refused_at_submit(make_settings: Callable[..., Settings], checkpoints) -> None:
    first, second = frames(40, 60)
    async with open_client(build_app(flow_settings(make_settings, checkpoints["flow"]))) as client:
        broken = {"files": {**upload(first, second)["files"], "frame1": ("a.png", b"not an image")}}
        assert_error(await client.post("/optical-flow?async=true", **broken), 415, "unsupported_media_type", "frame1")
        tiny_queue = {"task": "optical-flow", "source": str(checkpoints["flow"]), "max_queue": 2}
    async with open_client(build_app(make_settings(models={"flow": tiny_queue}))) as client:
        many = await client.post("/optical-flow?async=true", **upload(*frames(*FOUR_TILES)))
        assert_error(many, 413, "payload_too_large", "4 model tiles")


# ------------------------------------------------------------------------------------ the activation budget


def counted(model: torch.nn.Module) -> list[int]:
    """Batch sizes of `model`'s forward calls, as they happen."""
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
    return sizes


@pytest.mark.parametrize("per_pass", [1, 3])
def test_tiles_per_pass_follow_the_budget(checkpoints, per_pass: int) -> None:
    model = load_pretrained(str(checkpoints["flow"]), device="cpu", dtype=torch.float32)
    probe = OpticalFlowRunner(model, device=torch.device("cpu"), dtype=torch.float32)
    budget = per_pass * probe.tile_bytes + probe.tile_bytes // 2  # room for per_pass tiles and a half
    runner = OpticalFlowRunner(model, device=torch.device("cpu"), dtype=torch.float32, budget_bytes=budget)
    assert runner.tiles_per_pass == per_pass
    plan = runner.plan(*frames(*FOUR_TILES, seed=5))
    sizes = counted(model)
    with torch.inference_mode():
        out = runner.forward(runner.collate(plan.tiles))
        alone = torch.cat([runner.forward(runner.collate([tile])) for tile in plan.tiles])
    expected = [min(per_pass, 4 - i) for i in range(0, 4, per_pass)]
    assert sizes[: len(expected)] == expected
    assert torch.equal(out, alone)  # a tile's flow does not depend on its pass-mates


def test_the_budget_is_a_setting_and_holds_the_real_tile_to_one_per_pass(
    make_settings: Callable[..., Settings], checkpoints
) -> None:
    from model_core import from_config
    from model_core.presets import preset_config
    from server.limits import Limits

    settings = flow_settings(make_settings, checkpoints["flow"], flow_budget_mb=0.5)
    assert Limits.of(settings.server).flow_budget_bytes == 2**19
    with torch.device("meta"):
        real = from_config(preset_config("optical-flow-perceiver"), device="meta")
    runner = OpticalFlowRunner(real, device=torch.device("meta"), dtype=torch.float32)
    # The default budget (1024 MB) holds one 368x496 tile of the published model: a pass holds no more than
    # transformers' tile-by-tile loop does, whatever max_batch_size lets the batcher gather.
    assert runner.tiles_per_pass == 1 and 1 * 2**30 < runner.tile_bytes < 2 * 2**30
