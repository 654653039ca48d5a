"""The access log (one line per request, every field an operator filters on) and the error log (5xx at error,
4xx at debug), over the real app in-process."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from server.app import build_app
from server.observability import logs
from server.settings import Settings
from tests.server.support import open_client

pytestmark = pytest.mark.anyio
FIELDS = {"request_id", "method", "route", "status", "duration_ms", "model", "bytes_in", "bytes_out", "client"}
TIMINGS = {"queue_ms", "inference_ms", "inference_total_ms", "batch_size", "items"}


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(build_app(make_settings(server={"max_inputs": 4}))) as c:
        yield c


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logs.ACCESS_LOGGER]


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "server.http.access"]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_one_line_per_request_with_every_field(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = {"inputs": ["a[MASK]", "b[MASK]"]}
    r = await client.post("/fill-mask?model=mlm", json=body, headers={"X-Request-Id": "abc-123"})
    assert r.status_code == 200
    (record,) = access_records(caplog)
    fields = vars(record)
    assert set(fields) >= FIELDS | TIMINGS
    assert record.levelno == logging.INFO and record.getMessage() == "POST /fill-mask 200"
    assert fields["request_id"] == "abc-123" and fields["route"] == "/fill-mask" and fields["model"] == "mlm"
    assert fields["method"] == "POST" and fields["status"] == 200 and fields["duration_ms"] > 0
    assert fields["bytes_in"] == len(r.request.content) and fields["bytes_out"] == len(r.content)
    assert fields["items"] == 2 and 1 <= fields["batch_size"] <= 2
    assert (
        fields["inference_ms"] > 0
        and fields["queue_ms"] >= 0
        and fields["inference_total_ms"] >= fields["inference_ms"]
    )
    assert fields["client"]  # httpx's ASGI transport reports 127.0.0.1:123


async def test_every_route_kind_is_logged_with_its_template(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await client.post("/classify-image", content=png(), headers={"Content-Type": "image/png"})
    await client.get("/v2/models/mlm")
    await client.get("/jobs/nope")
    await client.get("/no/such/path?secret=1")
    got = [(r.route, r.status, r.model) for r in access_records(caplog)]  # type: ignore[attr-defined]
    assert got[0] == ("/classify-image", 200, "conv")
    assert got[1] == ("/v2/models/{name}", 200, "")
    assert got[2] == ("/jobs/{job_id}", 404, "")
    assert got[3] == ("", 404, "")
    unrouted = access_records(caplog)[3]
    assert unrouted.path == "/no/such/path"  # type: ignore[attr-defined]
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert all("secret" not in json.dumps(vars(r), default=str) for r in server_side)


async def test_probes_and_scrapes_log_at_debug(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for path in ("/health/live", "/health/ready", "/v2/health/ready", "/metrics"):
        assert (await client.get(path)).status_code == 200
    assert [r.levelno for r in access_records(caplog)] == [logging.DEBUG] * 4


async def test_a_probe_answering_503_is_not_an_error(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = build_app(make_settings())
    async with open_client(app) as client:
        app.state.lifecycle.begin_drain()
        assert (await client.get("/health/ready")).status_code == 503
    (line,) = [e for e in error_records(caplog) if e.status == 503]  # type: ignore[attr-defined]
    assert line.levelno == logging.DEBUG and "shutting down" in line.getMessage()


async def test_a_5xx_is_logged_at_error_with_its_request_id_model_and_message(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await client.post("/fill-mask?model=offline", json={"inputs": "x[MASK]"}, headers={"X-Request-Id": "r5"})
    assert r.status_code == 503
    (error,) = [e for e in error_records(caplog) if e.levelno == logging.ERROR]
    assert error.request_id == "r5" and error.model == "offline"  # type: ignore[attr-defined]
    assert error.error_code == "model_unavailable" and "503" in error.getMessage()  # type: ignore[attr-defined]
    assert r.json()["error"]["message"] in error.getMessage()
    # The model's load failure was logged too, with the id of the request whose arrival started the load.
    (load,) = [x for x in caplog.records if "load failed after" in x.getMessage()]
    assert load.levelno == logging.ERROR and load.model == "offline"  # type: ignore[attr-defined]
    assert load.duration_s >= 0  # type: ignore[attr-defined]


async def test_a_4xx_is_logged_at_debug_only(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert (await client.post("/fill-mask", json={"inputs": 5})).status_code == 422
    assert error_records(caplog) == []
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    assert (await client.post("/fill-mask", json={"inputs": ["x"] * 9})).status_code == 413
    (error,) = error_records(caplog)
    assert error.levelno == logging.DEBUG and error.error_code == "payload_too_large"  # type: ignore[attr-defined]


async def test_the_access_log_can_be_turned_off(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_client(build_app(make_settings(server={"access_log": False}))) as client:
        assert (await client.post("/fill-mask", json={"inputs": "x[MASK]"})).status_code == 200
    assert access_records(caplog) == []


async def test_a_json_access_line_is_one_object_with_the_fields(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await client.post("/fill-mask", json={"inputs": "x[MASK]"})
    (record,) = access_records(caplog)
    entry = json.loads(logs.JSONFormatter().format(record))
    assert FIELDS | TIMINGS | {"time", "level", "logger", "message"} <= set(entry)
    assert entry["logger"] == "server.access" and entry["level"] == "info"
