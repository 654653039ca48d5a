"""Who may see a job, and what a job store that cannot be reached does to the app: over HTTP, in process, with
either store (the Redis one on a real redis-server)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from server.app import build_app
from server.settings import Settings
from tests.server.conftest import free_port
from tests.server.support import assert_error, open_client
from tests.server.tasks.test_video_autoencoding import clip, parts, settings_for

pytestmark = pytest.mark.anyio
KEY, OTHER_KEY = "k3y-Alpha-0123456789abcdef", "k3y-Bravo-fedcba9876543210"


@pytest.fixture(params=["in-process", "redis"])
def store_table(request: pytest.FixtureRequest) -> dict[str, Any]:
    """[server] keys choosing the job store."""
    if request.param == "in-process":
        return {}
    return {"jobs_url": request.getfixturevalue("redis_url")}


async def finished(client: httpx.AsyncClient, location: str, headers: dict[str, str]) -> dict[str, Any]:
    while (info := (await client.get(location, headers=headers)).json())["status"] not in ("done", "failed"):
        await asyncio.sleep(0.02)
    return info


async def test_with_api_keys_a_job_is_its_submitters_alone(
    make_settings: Callable[..., Settings], checkpoints, store_table: dict[str, Any]
) -> None:
    settings = settings_for(make_settings, checkpoints["video"], server={"api_keys": [KEY, OTHER_KEY], **store_table})
    mine, theirs = {"X-API-Key": KEY}, {"Authorization": f"Bearer {OTHER_KEY}"}
    async with open_client(build_app(settings)) as client:
        accepted = await client.post("/autoencode-video?async=true", files=parts(*clip(2)), headers=mine)
        assert accepted.status_code == 202, accepted.text
        location = accepted.headers["location"]
        for method, path in [("GET", location), ("GET", f"{location}/result"), ("DELETE", location)]:
            assert_error(await client.request(method, path, headers=theirs), 404, "not_found", "no job")
        assert (await finished(client, location, mine))["status"] == "done"
        assert (await client.get(f"{location}/result", headers=theirs)).status_code == 404
        assert (await client.get(f"{location}/result", headers=mine)).status_code == 200
        if store_table:  # Redis holds the key's digest, never the key
            stored = await _every_value(store_table["jobs_url"])
            assert hashlib.sha256(KEY.encode()).hexdigest().encode() in stored
            assert KEY.encode() not in stored and OTHER_KEY.encode() not in stored
        assert (await client.delete(location, headers=theirs)).status_code == 404
        assert (await client.delete(location, headers=mine)).status_code == 204
        assert (await client.get(location, headers=mine)).status_code == 404


async def _every_value(url: str) -> bytes:
    client = aioredis.from_url(url)
    values = []
    async for key in client.scan_iter():
        if await client.type(key) == b"hash":
            values += [*(await client.hgetall(key)).values()]
    await client.aclose()
    return b"\n".join(values)


async def test_an_unreachable_job_store_fails_job_routes_only(
    make_settings: Callable[..., Settings], checkpoints
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    optional = settings_for(make_settings, checkpoints["video"], server={"jobs_url": nowhere})
    required = settings_for(make_settings, checkpoints["video"], server={"jobs_url": nowhere, "jobs_required": True})
    async with open_client(build_app(optional)) as client, open_client(build_app(required)) as strict:
        refused = await client.post("/autoencode-video?async=true", files={"video": ("v.npy", b"not even read")})
        body = assert_error(refused, 503, "jobs_unavailable", "job store (Redis) cannot be reached", "synchronous")
        assert int(refused.headers["retry-after"]) >= 1 and "127.0.0.1" not in body["error"]["message"]
        for method, path in [("GET", "/jobs/some-id"), ("GET", "/jobs/some-id/result"), ("DELETE", "/jobs/some-id")]:
            assert_error(await client.request(method, path), 503, "jobs_unavailable")
        assert (await client.post("/autoencode-video", files=parts(*clip(2)))).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200  # jobs are not required: it serves the rest
        assert_error(await strict.get("/health/ready"), 503, "not_ready", "job store (Redis)")
        assert (await strict.post("/autoencode-video", files=parts(*clip(2)))).status_code == 200
