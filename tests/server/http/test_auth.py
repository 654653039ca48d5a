"""API keys: default-deny when configured, constant-time comparison, never logged; model names only from the config."""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from model_core import save_pretrained
from server.app import build_app
from server.engine.loading import load_model
from server.http.auth import KeyCheck
from server.observability import logs
from server.settings import ModelSpec, Settings, SettingsError, load_settings
from tests.server.conftest import free_port, wait_ready
from tests.server.crafted import image_file, nested_json
from tests.server.support import assert_error, assert_v2_error, open_client

pytestmark = pytest.mark.anyio
KEY, OTHER_KEY = "k3y-Alpha-0123456789abcdef", "k3y-Bravo-fedcba9876543210"
MASKED = {"inputs": "Hello [MASK]orld"}


@pytest.fixture
def keyed(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    return lambda **server: make_settings(server={"api_keys": [KEY, OTHER_KEY], **server})


@pytest.fixture
async def client(keyed: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(build_app(keyed())) as c:
        yield c


def assert_unauthorized(response: httpx.Response, *needles: str) -> None:
    """A 401 in the error shape of its path: the protocol's under /v2."""
    if response.url.path.startswith("/v2"):
        assert_v2_error(response, 401, *needles)
    else:
        assert_error(response, 401, "unauthorized", *needles)
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


async def test_every_route_but_the_probes_needs_a_key(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json", headers={"X-API-Key": KEY})).json()
    operations = [(method, path) for path, ops in spec["paths"].items() for method in ops]
    assert len(operations) >= 8
    for method, path in operations:
        r = await client.request(method, path.replace("{name}", "mlm").replace("{version}", "1"))
        if path in ("/health/live", "/health/ready", "/metrics", "/v2/health/live", "/v2/health/ready"):
            assert r.status_code == 200, path  # probes are open
        else:
            assert_unauthorized(r, "API key is required")
    for path in ("/openapi.json", "/docs", "/no-such-route", "/health/../v1/models", "/health/live/", "/v2/nope"):
        assert_unauthorized(await client.get(path))


async def test_a_key_is_accepted_as_bearer_or_x_api_key(client: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"Authorization": f"bearer {OTHER_KEY}"}, {"X-API-Key": KEY}):
        r = await client.post("/fill-mask", json=MASKED, headers=headers)
        assert r.status_code == 200, (headers, r.text)
    for headers in (
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"X-API-Key": "k3y-Alpha-0123456789abcdeF"},
        {"Authorization": "Bearer "},
    ):
        r = await client.post("/fill-mask", json=MASKED, headers=headers)
        assert_unauthorized(r, "not valid")
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert_unauthorized(
        await client.post("/fill-mask", json=MASKED, headers={"Authorization": f"Basic {KEY}"}), "required"
    )


async def test_unauthenticated_requests_are_refused_before_the_body_is_read(client: httpx.AsyncClient) -> None:
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(b"x")
        yield nested_json(10_000)

    r = await client.post(
        "/fill-mask", content=body(), headers={"Content-Type": "application/json", "X-Request-Timeout": "nonsense"}
    )
    assert_unauthorized(r)
    assert read == []


async def test_metrics_can_require_a_key(keyed: Callable[..., Settings]) -> None:
    async with open_client(build_app(keyed(public_metrics=False))) as client:
        assert_unauthorized(await client.get("/metrics"))
        assert (await client.get("/metrics", headers={"X-API-Key": KEY})).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200


async def test_openapi_declares_the_schemes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json", headers={"X-API-Key": KEY})).json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "401" in spec["paths"]["/fill-mask"]["post"]["responses"]
    assert "security" not in spec["paths"]["/health/ready"]["get"]


def test_every_key_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(True) or real(a, b))
    keys = [KEY, OTHER_KEY, "k3y-Charlie-0123456789ab"]
    check = KeyCheck(keys)
    for key, allowed in ((KEY, True), (OTHER_KEY, True), ("k3y-Delta-0123456789abcd", False), ("", False)):
        calls.clear()
        assert check.allows(key.encode()) is allowed
        assert len(calls) == 3


def test_keys_come_from_env_and_file_and_weak_ones_are_refused_unechoed(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = load_settings(environ={"PERCEIVER_SERVE_API_KEYS": f"{KEY}, {OTHER_KEY}"})
    assert [k.get_secret_value() for k in settings.server.api_keys] == [KEY, OTHER_KEY]
    assert KEY not in repr(settings)
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"PERCEIVER_SERVE_API_KEYS": "hunter2"})
    assert "16 to 256" in str(info.value) and "hunter2" not in str(info.value)

    keys = tmp_path / "keys"
    keys.write_text(f"# rotated monthly\n\n{KEY}\n")
    assert build_app(make_settings(server={"api_keys_file": str(keys)})).user_middleware  # builds
    keys.write_text(f"{KEY}\nshort secret\n")
    with pytest.raises(SettingsError) as info:
        build_app(make_settings(server={"api_keys_file": str(keys)}))
    assert "line 2" in str(info.value) and "short secret" not in str(info.value)
    with pytest.raises(SettingsError, match="cannot read"):
        build_app(make_settings(server={"api_keys_file": str(tmp_path / "missing")}))


async def test_a_key_file_enables_auth(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    async with open_client(build_app(make_settings(server={"api_keys_file": str(keys)}))) as client:
        assert_unauthorized(await client.post("/fill-mask", json=MASKED))
        assert (await client.post("/fill-mask", json=MASKED, headers={"X-API-Key": KEY})).status_code == 200


def test_keys_and_authorization_headers_are_never_logged(
    keyed: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(keyed()), port=port, log_level="debug", access_log=True))
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):  # uvicorn's loggers do not propagate to root
        logging.getLogger(name).addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, timeout_s=30)
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.post("/fill-mask", json=MASKED, headers={"Authorization": f"Bearer {KEY}"}).is_success
            assert http.post("/fill-mask", json=MASKED, headers={"X-API-Key": OTHER_KEY}).is_success
            assert (
                http.post("/fill-mask", json=MASKED, headers={"Authorization": "Bearer wrong-" + KEY}).status_code
                == 401
            )
            assert http.post("/fill-mask?model=nope", json=MASKED, headers={"X-API-Key": KEY}).status_code == 404
    finally:
        server.should_exit = True
        thread.join(30)
        for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).removeHandler(caplog.handler)
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # not the client's
    # Every field of every record: the message, its arguments, the traceback and the structured fields that the
    # JSON format writes out (the access and error lines carry theirs as extra fields).
    logged = "\n".join(
        f"{r.getMessage()} {r.args} {r.exc_text or ''} {logs.JSONFormatter().format(r)}" for r in server_side
    )
    assert "POST /fill-mask" in logged  # the access log ran
    assert any(r.name == logs.ACCESS_LOGGER and getattr(r, "status", None) == 401 for r in server_side)
    assert any(r.name == "server.http.access" and getattr(r, "status", None) == 404 for r in server_side)
    for secret in (KEY, OTHER_KEY, "Bearer", "wrong-"):
        assert secret not in logged


# ---------------------------------------------------------------- model names come only from the configuration


class CountingLoader:
    def __init__(self) -> None:
        self.sources: list[str] = []

    def __call__(self, spec: ModelSpec, settings: Settings) -> Any:
        self.sources.append(spec.source)
        return load_model(spec, settings)


@pytest.fixture(scope="module")
def unconfigured_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from model_core import from_config
    from tests.server.conftest import CONFIGS

    model = from_config(CONFIGS["conv"], device="cpu", dtype=torch.float32, seed=3)
    return save_pretrained(model, tmp_path_factory.mktemp("elsewhere") / "conv")


async def test_a_request_cannot_name_a_path_or_an_unconfigured_hub_id(
    make_settings: Callable[..., Settings], checkpoints: dict[str, Path], unconfigured_checkpoint: Path
) -> None:
    loader = CountingLoader()
    async with open_client(build_app(make_settings(server={"admin_api": True}), loader=loader)) as client:
        for name in (
            "/etc/passwd",
            "../../../../etc/passwd",
            str(unconfigured_checkpoint),
            "deepmind/vision-perceiver-learned",
            "https://example.com/model.bin",
            "file:///etc/passwd",
            str(checkpoints["mlm"]),
            "mlm",
            "conv/../mlm",
        ):
            r = await client.post("/classify-image", params={"model": name}, content=image_file())
            assert_error(r, 404, "unknown_model", "configured: conv, conv-b")
        for name in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "deepmind%2Fvision-perceiver-learned"):
            assert (await client.post(f"/v1/models/{name}/load")).status_code == 404
        assert loader.sources == []  # nothing was ever loaded on a request's say-so
        by_source = await client.post(
            "/classify-image", params={"model": str(checkpoints["conv"])}, content=image_file()
        )  # a configured model's source names that model
        assert by_source.status_code == 200 and by_source.headers["X-Model"] == "conv"
        assert loader.sources == [str(checkpoints["conv"])]


# ---------------------------------------------------------------- open probes say why, never what

SECRET_PATH = "/srv/private/perceiver/mlm/model.safetensors"
PROBES = ("/health/ready", "/v2/health/ready")


def failing_mlm(spec: ModelSpec, settings: Settings) -> Any:
    if spec.name == "mlm":
        raise OSError(f"cannot open {SECRET_PATH} (injected)")
    return load_model(spec, settings)


async def until_preloaded(client: httpx.AsyncClient) -> None:
    for _ in range(500):
        if "preloading" not in (await client.get("/health/ready")).text:
            return
        await anyio.sleep(0.02)
    raise AssertionError("the preload never finished")


def probe_message(response: httpx.Response) -> str:
    """The message of a probe's "no": 503 in the app's error shape on /health, 400 (the protocol's 4xx) in the v2
    shape on /v2/health."""
    v2 = response.url.path.startswith("/v2/")
    assert response.status_code == (400 if v2 else 503), response.text
    body = response.json()
    return body["error"] if v2 else body["error"]["message"]


async def test_with_keys_a_failed_preload_shows_only_its_category_on_the_open_probes(
    keyed: Callable[..., Settings],
) -> None:
    async with open_client(build_app(keyed(preload=["mlm"], load_retry_s=60), loader=failing_mlm)) as client:
        await until_preloaded(client)
        for path in PROBES:
            r = await client.get(path)
            assert probe_message(r) == "not ready: a preloaded model failed to load", path
            assert r.headers["Retry-After"] == "1"
            for detail in (SECRET_PATH, "/srv", "mlm", "injected", "OSError"):
                assert detail not in r.text, (path, detail)
        models = (await client.get("/v1/models", headers={"X-API-Key": KEY})).json()["models"]
        assert SECRET_PATH in next(m for m in models if m["name"] == "mlm")["reason"]  # the details, for a key


async def test_without_keys_the_probes_keep_the_details(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(server={"preload": ["mlm"], "load_retry_s": 60})
    async with open_client(build_app(settings, loader=failing_mlm)) as client:
        await until_preloaded(client)
        for path in PROBES:
            message = probe_message(await client.get(path))
            assert "mlm" in message and SECRET_PATH in message, path


@pytest.mark.parametrize("keys", [True, False])
async def test_a_stalled_batcher_is_named_on_the_liveness_probes_only_without_keys(
    keyed: Callable[..., Settings], make_settings: Callable[..., Settings], keys: bool
) -> None:
    app = build_app(keyed() if keys else make_settings())
    async with open_client(app) as client:
        app.state.registry.stuck = lambda limit_s: ["mlm"]  # as Registry.stuck answers when mlm's batcher stalls
        for path in ("/health/live", "/v2/health/live"):
            message = probe_message(await client.get(path))
            if keys:
                assert message == "a batcher stalled: no inference progress", path
            else:
                assert "mlm" in message and "no inference progress for over 300s" in message, path


async def test_with_keys_starting_and_draining_are_said_plainly(keyed: Callable[..., Settings]) -> None:
    app = build_app(keyed())
    transport = httpx.ASGITransport(app=app)  # no lifespan: the app has not started
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in PROBES:
            assert probe_message(await client.get(path)) == "not ready: starting up", path
    async with open_client(app) as client:
        for path in PROBES:
            assert (await client.get(path)).status_code == 200, path
        app.state.lifecycle.begin_drain()
        for path in PROBES:
            assert probe_message(await client.get(path)) == "not ready: shutting down", path
