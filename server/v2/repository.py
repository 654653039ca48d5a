"""Triton's model repository extension over the registry: the index of configured models and their states, a load
(what a model's first request does anyway, so a client that checks `is_model_ready` first can make it ready), and
an unload (queued work finishes first), which like /v1/models/{name}/unload needs `[server] admin_api = true`.

The repository is the configuration: a load request cannot bring a configuration or files of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.engine.registry import ModelState, Registry
from server.engine.serving import InferenceService
from server.errors import ErrorCode, ServeError
from server.v2.service import VERSION, find_model

# Triton's model states, and why a model is not ready when it is not.
_STATES = {
    ModelState.READY: ("READY", ""),
    ModelState.LOADING: ("LOADING", ""),
    ModelState.UNLOADED: ("UNAVAILABLE", "unloaded: loads on its first request or on a load request"),
    ModelState.FAILED: ("UNAVAILABLE", "load failed"),
}
UNLOAD_PARAMETERS = frozenset({"unload_dependents"})  # accepted, and nothing depends on a model here


def index(registry: Registry, *, ready: bool = False) -> list[dict[str, str]]:
    """Every configured model (with `ready`: the ready ones) as {"name", "version", "state", "reason"}."""
    out = []
    for name, entry in registry.entries.items():
        if ready and entry.state is not ModelState.READY:
            continue
        state, reason = _STATES[entry.state]
        out.append({"name": name, "version": VERSION, "state": state, "reason": entry.reason or reason})
    return out


def _no_parameters(parameters: Mapping[str, Any], accepted: frozenset[str], action: str) -> None:
    unknown = sorted(set(parameters) - accepted)
    if any(key == "config" or key.startswith("file:") for key in unknown):
        raise ServeError(
            ErrorCode.BAD_REQUEST,
            f"a {action} request cannot bring a configuration or files: models come from the server's configuration",
        )
    if unknown:
        raise ServeError(ErrorCode.BAD_REQUEST, f"unknown {action} parameter(s) {', '.join(unknown)}")


async def load(service: InferenceService, name: str, parameters: Mapping[str, Any], *, deadline: float) -> None:
    """Load the model `name` now, within the request's `deadline` (past it the load goes on, and the request
    answers 504)."""
    _no_parameters(parameters, frozenset(), "load")
    spec = find_model(service.settings, name, None)
    async with service.open(spec, deadline=deadline):
        pass


async def unload(registry: Registry, name: str, parameters: Mapping[str, Any]) -> None:
    if not registry.settings.server.admin_api:
        raise ServeError(
            ErrorCode.FORBIDDEN, "unloading models is not enabled on this server ([server] admin_api = true enables it)"
        )
    _no_parameters(parameters, UNLOAD_PARAMETERS, "unload")
    spec = find_model(registry.settings, name, None)
    await registry.unload(spec.name)
