"""Helpers shared by the in-process server tests."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI


@asynccontextmanager
async def open_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the app in-process, with its lifespan (startup/shutdown) run."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            yield client


def assert_error(response: httpx.Response, status: int, code: str, *needles: str) -> dict[str, Any]:
    """The response is the one error shape with this status and code, its message naming every needle."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}, body
    assert body["error"]["status"] == status and body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    for needle in needles:
        assert needle in body["error"]["message"], (needle, body)
    return body


def assert_v2_error(response: httpx.Response, status: int, *needles: str) -> str:
    """The response is the Open Inference Protocol's error, {"error": "message"}, with this status; returns the
    message, which names every needle."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert "Traceback" not in response.text
    for needle in needles:
        assert needle in body["error"], (needle, body)
    return body["error"]


R = TypeVar("R")


def with_forward(runner: R, forward: Callable[[Any, Callable[[Any], Any]], Any]) -> R:
    """A copy of `runner`, still an instance of its class, whose forward is forward(batch, the real forward)."""
    base, real = type(runner), runner.forward  # type: ignore[attr-defined]
    wrapped = copy.copy(runner)
    wrapped.__class__ = type(f"Wrapped{base.__name__}", (base,), {"forward": lambda self, batch: forward(batch, real)})
    return wrapped
