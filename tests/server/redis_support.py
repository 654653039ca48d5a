"""A real Redis server for the tests of the Redis job store: Debian's redis-server, installed with apt when the
machine lacks it, started on a free loopback port with persistence off, in a folder of its own.

Never a mock: what these tests show (claims, heartbeats, fencing, a restart) is Redis's behaviour.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 20.0


def ensure_redis_server() -> str:
    """The path of redis-server, installing Debian's package first if it is missing (CI starts on a fresh
    machine, as root; elsewhere through `sudo -n`)."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("redis-server is not installed and apt-get is not available: install Redis >= 6.2")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sudo = shutil.which("sudo")
    if os.geteuid() != 0:  # a developer's machine: apt needs root, asked of sudo without a prompt
        if sudo is None:
            raise RuntimeError(
                "redis-server is not installed, and installing it needs root: apt-get install redis-server"
            )
        apt_argv = [sudo, "-n", "--preserve-env=DEBIAN_FRONTEND", apt]
    else:
        apt_argv = [apt]
    for argv in (
        [*apt_argv, "update", "-qq"],
        [*apt_argv, "install", "-y", "-qq", "--no-install-recommends", "redis-server"],
    ):
        print(f"redis_support: running {' '.join(argv)}", flush=True)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr}")
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("apt-get installed redis-server, yet it is not on PATH")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process on 127.0.0.1: started, stopped and restarted on the same port by the tests."""

    def __init__(self, binary: str, folder: Path, *, password: str | None = None) -> None:
        self.binary, self.folder, self.password = binary, folder, password
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.folder), "--daemonize", "no", "--loglevel", "warning"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        with (self.folder / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {START_TIMEOUT_S}s")

    def stop(self) -> None:
        """Stop it the hard way (SIGKILL): nothing is saved, as when a Redis without persistence dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _command(self, command: bytes, timeout_s: float) -> bytes:
        """One inline command through the protocol (no client library needed), after AUTH with a password."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as s:
            if self.password is not None:
                s.sendall(b"AUTH " + self.password.encode() + b"\r\n")
                if not s.recv(16).startswith(b"+OK"):
                    return b""
            s.sendall(command + b"\r\n")
            return s.recv(16)

    def ping(self) -> bool:
        try:
            return self._command(b"PING", 0.5).startswith(b"+PONG")
        except OSError:
            return False

    def flush(self) -> None:
        """Empty the database between tests."""
        assert self._command(b"FLUSHALL", 5).startswith(b"+OK")

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
