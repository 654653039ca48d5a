from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import main

REPO = Path(__file__).resolve().parents[2]


def run_main(*argv: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    return int(info.value.code)


def test_invalid_config_exits_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('[server]\nport = 99999\n[models.m]\ntask = "fill-mask"\nsource = "a/b"\nmax_queue = 0\n')
    assert run_main("--config", str(config)) == 2
    err = capsys.readouterr().err
    assert "server.port" in err and "models.m.max_queue" in err and "Traceback" not in err


def test_a_model_on_the_command_line_is_checked_as_the_files_are(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("--model", "isvc", "no-such-task", "/mnt/models", "--grpc-port", "0") == 2
    err = capsys.readouterr().err
    assert "models.isvc.task" in err and "server.grpc_port" in err


def test_env_config_path_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('[server]\ndevice = "gpu"\n')
    monkeypatch.setenv("PERCEIVER_SERVE_CONFIG", str(config))
    assert run_main() == 2
    assert "server.device" in capsys.readouterr().err


def test_download_offline_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("download", "language-perceiver") == 1
    err = capsys.readouterr().err
    assert "FAILED language-perceiver" in err and "unset HF_HUB_OFFLINE" in err
    assert "perceiver-serve download" not in err  # no advice to run the command that just failed


def test_download_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("download", "nope") == 2
    assert "unknown model(s) nope" in capsys.readouterr().err


def test_download_of_a_local_folder_reports_it(
    tmp_path: Path, checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(f'[models.mlm]\ntask = "fill-mask"\nsource = "{checkpoints["mlm"]}"\n')
    assert run_main("download", "--config", str(config), "all") == 0
    out = capsys.readouterr().out
    assert "nothing to fetch: mlm" in out and "config.json" in out and "model.safetensors" in out


def test_console_script_and_module_entry_points() -> None:
    for command in (
        [sys.executable, "-m", "server", "--help"],
        [str(Path(sys.executable).parent / "perceiver-serve"), "download", "--help"],
    ):
        if not Path(command[0]).exists():
            pytest.skip("perceiver-serve console script not installed in this environment")
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "perceiver-serve" in done.stdout


def test_download_accepts_hub_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("download", "deepmind/language-perceiver", "someone/their-perceiver") == 1
    err = capsys.readouterr().err
    assert "FAILED deepmind/language-perceiver" in err and "FAILED someone/their-perceiver" in err


FD_SCRIPT = """
import logging, resource, sys
from server.cli import _make_room_for_connections
logging.basicConfig(level="WARNING", stream=sys.stdout, format="%(message)s")
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
_make_room_for_connections(500)
print("raised to", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 256))
_make_room_for_connections(500)
print("capped at", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_the_open_file_limit_is_raised_to_fit_max_connections() -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 564:
        pytest.skip("the hard open-file limit here is below what the test raises to")
    done = subprocess.run([sys.executable, "-c", FD_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "raised to 564" in lines  # 500 connections + a margin for the listener, model files and logs
    assert "capped at 256" in lines  # the hard limit: said, not failed
    assert any("max_connections = 500" in line and "ulimit -n" in line for line in lines), lines


def test_finetune_is_a_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\nfine,a\n")
    assert run_main("finetune", "--base", str(tmp_path), "--train", str(train), "--out", str(tmp_path / "out")) == 2
    assert f"{train}: one label only ('a')" in capsys.readouterr().err
    done = subprocess.run(
        [sys.executable, "-m", "server", "finetune", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "perceiver-serve finetune" in done.stdout and "--unfreeze" in done.stdout
