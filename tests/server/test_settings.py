from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.engine.devices import check_devices
from server.models.catalog import CATALOG
from server.settings import SettingsError, Task, build_settings, load_settings

CATALOG_NAMES = [e["name"] for e in CATALOG]


def test_no_config_serves_the_catalog() -> None:
    settings = load_settings(environ={})
    assert list(settings.models) == CATALOG_NAMES
    assert settings.default_model(Task.FILL_MASK).source == "deepmind/language-perceiver"
    assert settings.default_model(Task.IMAGE_CLASSIFICATION).source == "deepmind/vision-perceiver-conv"
    assert settings.find_model(Task.IMAGE_CLASSIFICATION, "fourier").source == "deepmind/vision-perceiver-fourier"
    assert settings.find_model(Task.IMAGE_CLASSIFICATION, "vision-perceiver-learned") is not None
    assert settings.default_model(Task.TEXT_CLASSIFICATION) is None
    assert settings.server.device == "auto" and settings.server.dtype == "auto"


def test_toml_contract(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text("""
[server]
device = "cpu"
dtype = "auto"
port = 9001
memory_budget_mb = 512
preload = ["mlm"]

[models.mlm]
task = "fill-mask"
source = "deepmind/language-perceiver"
max_batch_size = 16
max_delay_ms = 2
max_queue = 100

[models.mine]
task = "text-classification"
source = "./checkpoints/mine"
device = "cpu"
dtype = "bfloat16"
default = true
""")
    settings = load_settings(path, environ={})
    assert list(settings.models) == ["mlm", "mine"]  # configured models replace the catalog
    mlm = settings.models["mlm"]
    assert (mlm.max_batch_size, mlm.max_delay_ms, mlm.max_queue) == (16, 2, 100)
    assert settings.server.port == 9001 and settings.server.memory_budget_mb == 512
    assert settings.default_model(Task.TEXT_CLASSIFICATION).name == "mine"


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('[server]\nport = 9001\nhost = "0.0.0.0"\nlog_level = "debug"\n')
    env = {"PERCEIVER_SERVE_CONFIG": str(path), "PERCEIVER_SERVE_PORT": "9002", "PERCEIVER_SERVE_LOG_LEVEL": "error"}
    settings = load_settings(environ=env, overrides={"port": 9003, "host": None})
    assert (settings.server.host, settings.server.port, settings.server.log_level) == ("0.0.0.0", 9003, "error")


def test_models_given_beside_the_file_join_its_own_and_replace_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('[models.mlm]\ntask = "fill-mask"\nsource = "a/b"\n')
    extra = {"isvc": {"task": "text-classification", "source": "/mnt/models"}}
    settings = load_settings(path, environ={}, models=extra)
    assert list(settings.models) == ["mlm", "isvc"] and settings.models["isvc"].source == "/mnt/models"
    assert list(load_settings(environ={}, models=extra).models) == ["isvc"]
    with pytest.raises(SettingsError, match="models.isvc.task"):
        load_settings(environ={}, models={"isvc": {"task": "", "source": "/mnt/models"}})
    grpc = load_settings(environ={"PERCEIVER_SERVE_GRPC_PORT": "8001"}).server.grpc_port
    assert grpc == 8001 and load_settings(environ={}).server.grpc_port is None  # off unless asked


def test_catalog_kept_alongside_configured_models() -> None:
    settings = build_settings(
        {"server": {"catalog": True}, "models": {"mine": {"task": "fill-mask", "source": "me/mine", "default": True}}}
    )
    assert set(CATALOG_NAMES) < set(settings.models)
    assert settings.default_model(Task.FILL_MASK).name == "mine"


@pytest.mark.parametrize(
    "table, expected",
    [
        ({"server": {"port": 0}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"device": "tpu"}}, "server.device"),
        ({"server": {"dtype": "int8"}}, "server.dtype"),
        ({"server": {"request_timeout_s": 0}}, "server.request_timeout_s"),
        ({"server": {"memory_budget_mb": -5}}, "server.memory_budget_mb"),
        ({"server": {"unknown_key": 1}}, "unknown_key"),
        ({"server": {"preload": ["nope"]}}, "nope"),
        ({"servers": {}}, "servers"),
        ({"models": {"m": {"task": "fill-mask", "source": "a/b", "max_batch_size": 0}}}, "max_batch_size"),
        ({"models": {"m": {"task": "fill-mask", "source": "a/b", "max_batch_size": 100000}}}, "max_batch_size"),
        ({"models": {"m": {"task": "fill-mask", "source": "a/b", "max_queue": 0}}}, "max_queue"),
        ({"models": {"m": {"task": "fill-mask", "source": "a/b", "max_delay_ms": -1}}}, "max_delay_ms"),
        ({"models": {"m": {"task": "translate", "source": "a/b"}}}, "task"),
        ({"models": {"m": {"task": "fill-mask"}}}, "source"),
        ({"models": {"m": {"task": "fill-mask", "source": "has space"}}}, "source"),
        ({"models": {"bad name": {"task": "fill-mask", "source": "a/b"}}}, "bad name"),
        (
            {
                "models": {
                    "a": {"task": "fill-mask", "source": "a/b", "default": True},
                    "b": {"task": "fill-mask", "source": "a/c", "default": True},
                }
            },
            "several default",
        ),
        (
            {
                "models": {
                    "a": {"task": "fill-mask", "source": "a/b", "aliases": ["b"]},
                    "b": {"task": "fill-mask", "source": "a/c"},
                }
            },
            "used twice",
        ),
    ],
)
def test_invalid_values_are_refused_with_the_key(table: dict, expected: str) -> None:
    with pytest.raises(SettingsError, match="invalid configuration") as info:
        build_settings(table)
    assert expected in str(info.value)


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = ")
    with pytest.raises(SettingsError, match="bad.toml"):
        load_settings(bad, environ={})


def test_device_checks_at_start_up() -> None:
    with pytest.raises(SettingsError, match="float16"):
        check_devices(build_settings({"server": {"device": "cpu", "dtype": "float16"}}))
    if not torch.cuda.is_available():
        with pytest.raises(SettingsError, match="no CUDA device"):
            check_devices(build_settings({"server": {"device": "cuda"}}))
        with pytest.raises(SettingsError, match="no CUDA device"):
            check_devices(build_settings({"models": {"m": {"task": "fill-mask", "source": "a/b", "device": "cuda:1"}}}))
    check_devices(build_settings({"server": {"device": "auto"}}))


def test_jobs_url_from_the_environment_and_never_echoed() -> None:
    url = "rediss://user:s3cret-pass@redis.example:6380/2"
    settings = load_settings(environ={"PERCEIVER_SERVE_JOBS_URL": url})
    assert settings.server.jobs_url is not None and settings.server.jobs_url.get_secret_value() == url
    assert "s3cret" not in repr(settings.server)
    assert load_settings(environ={"PERCEIVER_SERVE_JOBS_URL": ""}).server.jobs_url is None  # compose's ${VAR:-}
    with pytest.raises(SettingsError, match="jobs_url") as info:
        load_settings(environ={"PERCEIVER_SERVE_JOBS_URL": "http://user:s3cret-pass@redis.example/0"})
    assert "s3cret" not in str(info.value)
    with pytest.raises(SettingsError, match="jobs_required needs jobs_url"):
        build_settings({"server": {"jobs_required": True}})


def test_model_deadlines_by_device() -> None:
    spec = {"task": "optical-flow", "source": "some/flow"}
    settings = build_settings({"models": {"flow": {**spec, "request_timeout_s": {"cpu": 300, "cuda": 60}}}})
    flow = settings.models["flow"]
    assert (flow.timeout_s("cpu"), flow.timeout_s("cuda")) == (300, 60)
    plain = build_settings({"models": {"flow": {**spec, "request_timeout_s": 45}}}).models["flow"]
    assert (plain.timeout_s("cpu"), plain.timeout_s("cuda")) == (45, 45)
    with pytest.raises(SettingsError, match="request_timeout_s"):
        build_settings({"models": {"flow": {**spec, "request_timeout_s": {"tpu": 5}}}})


def test_catalog_flow_and_video_deadlines_fit_their_cost_and_the_cap() -> None:
    settings = build_settings({})
    cap = settings.server.request_timeout_cap_s
    assert cap > settings.server.request_timeout_s  # a client may ask for more than the default
    for name in ("optical-flow-perceiver", "multimodal-perceiver"):
        spec = settings.models[name]
        cpu, cuda = spec.timeout_s("cpu"), spec.timeout_s("cuda")
        assert cpu is not None and cuda is not None
        assert settings.server.request_timeout_s < cuda < cpu <= cap
    assert settings.models["language-perceiver"].timeout_s("cpu") is None  # the server's default
    assert settings.server.shutdown_grace_s == settings.server.request_timeout_s + 5
