"""The Redis job store's connection: the client (redis-py's asyncio client), its scripts, how a job's error is
written there, and the one 503 for a store that cannot be reached.

The client fails fast (short connect timeout, one immediate retry on a fresh connection): a submission that
cannot reach Redis answers 503 within seconds, and synchronous routes never touch it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from server.engine.jobs.redis_scripts import PRELUDE, SCRIPTS
from server.errors import ErrorCode, ServeError
from server.settings import SettingsError

log = logging.getLogger(__name__)

PREFIX = "perceiver-serve:jobs:"
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 10.0  # a reply may be a result of up to max_response_mb; the runner blocks at most a tick
RETRY_AFTER_S = 5.0  # what a 503 for an unreachable store tells the client


def connect(url: str, *, password_file: Path | None = None) -> Redis:
    """A client for `url` (redis:// or rediss://, options in the query); the password from `password_file` when
    the URL has none. Nothing is sent until the first command."""
    options: dict[str, Any] = {}
    if password_file is not None:
        try:
            options["password"] = Path(password_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"jobs_password_file {password_file}: cannot read it ({type(exc).__name__})") from None
    return Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1),  # one more try on a new connection: a stale one after a Redis restart
        client_name="perceiver-serve",
        **options,
    )


def replica_name() -> str:
    """This process's consumer name in the group: the host (a pod's name), the pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class RedisJobs:
    """The client and the store's scripts (loaded on first use, and again after a Redis restart)."""

    def __init__(self, client: Redis, *, prefix: str = PREFIX) -> None:
        self.client, self.prefix = client, prefix
        self.stream = prefix + "stream"
        self._scripts = {name: client.register_script(PRELUDE + source) for name, source in SCRIPTS.items()}

    async def run(self, script: str, *args: str | int | bytes) -> Any:
        return await self._scripts[script](keys=[], args=[self.prefix, *args])


def unreachable(exc: RedisError) -> ServeError:
    return ServeError(
        ErrorCode.JOBS_UNAVAILABLE,
        f"the job store (Redis) cannot be reached ({type(exc).__name__}): background jobs cannot be submitted or "
        "read now; synchronous requests still work. Retry shortly",
        retry_after=RETRY_AFTER_S,
    )


@contextlib.contextmanager
def reaching_redis() -> Iterator[None]:
    """Redis's errors as the one 503 (the details go to the log, never the URL or a password)."""
    try:
        yield
    except RedisError as exc:
        log.warning("job store: %s: %s", type(exc).__name__, exc)
        raise unreachable(exc) from None


def error_json(error: ServeError) -> str:
    return json.dumps({"code": error.code.value, "message": error.message})


def error_from(text: bytes | None) -> ServeError | None:
    if not text:
        return None
    data = json.loads(text)
    return ServeError(ErrorCode(data["code"]), data["message"])


def text(value: bytes | None) -> str:
    return value.decode() if value else ""
