"""What a running server offers: the routes it serves, the model behind each, and that model's input shapes.

Standard library only (urllib), so both the Locust file (gevent) and the asyncio runner can use it.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from loadtest.payloads import ROUTE_TASKS, ModelShapes


class TargetError(RuntimeError):
    """The target cannot be load-tested as asked (not loopback, unreachable, nothing to test)."""


@dataclass(frozen=True)
class RouteTarget:
    route: str
    task: str
    model: str  # the task's default model: what the route serves without ?model=
    status: str  # unloaded, loading, ready, failed (as GET /v1/models says)
    shapes: ModelShapes


def is_loopback(url: str) -> bool:
    """True when every address the URL's host resolves to is a loopback address."""
    host = urlsplit(url).hostname
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_target(url: str, *, allow_remote: bool) -> str:
    """The base URL without a trailing slash; refuses non-loopback hosts unless `allow_remote`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"target {url!r} is not an http(s) URL")
    if not allow_remote and not is_loopback(url):
        raise TargetError(
            f"target {url!r} is not a loopback address; load tests only run against this machine "
            "unless --allow-remote is given (and you own the target)"
        )
    return url.rstrip("/")


def auth_headers(api_key: str | None) -> dict[str, str]:
    """What a server with `[server] api_keys` wants on every route but /health/*."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def get_json(url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise TargetError(f"GET {url} failed: {exc}") from None


def discover(base: str, *, headers: dict[str, str] | None = None) -> dict[str, RouteTarget]:
    """Routes the server both exposes (OpenAPI) and has a default model for (GET /v1/models)."""
    paths = set(get_json(f"{base}/openapi.json", headers=headers).get("paths", {}))
    models = get_json(f"{base}/v1/models", headers=headers)["models"]
    found = {}
    for route, task in ROUTE_TASKS.items():
        of_task = [m for m in models if m["task"] == task]
        model = next((m for m in of_task if m.get("is_default")), of_task[0] if of_task else None)
        if route not in paths or model is None:
            continue
        found[route] = RouteTarget(
            route, task, model["name"], model["status"], ModelShapes.from_source(model["source"])
        )
    return found
