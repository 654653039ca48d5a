"""Optional API-key authentication, as plain ASGI middleware (inside RequestMiddleware, before any body is read).

With no key configured every request passes. With keys (`[server] api_keys`, PERCEIVER_SERVE_API_KEYS,
`api_keys_file`), every route except the probes (and /metrics unless `public_metrics = false`) needs
`Authorization: Bearer <key>` or `X-API-Key: <key>`; anything else is 401 (in the error shape of its path) with
`WWW-Authenticate: Bearer`. Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every
configured key, so neither the match nor its position shows in the timing. Keys are never logged. The gRPC front end
checks its `authorization` / `x-api-key` metadata with the same `KeyCheck`. An admitted HTTP request carries its
key's digest (never the key) in its scope: the jobs it submits belong to that key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import ErrorCode, ServeError, error_response
from server.http.scope import KEY_DIGEST_KEY, METRICS, PROBES
from server.settings import API_KEY, ServerSettings, SettingsError

_BEARER = b"bearer "


def configured_keys(server: ServerSettings) -> list[str]:
    """The keys of `api_keys` and of `api_keys_file` (one per line; blank lines and # comments skipped)."""
    keys = [k.get_secret_value() for k in server.api_keys]
    path = server.api_keys_file
    if path is None:
        return keys
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"api_keys_file {path}: cannot read it ({type(exc).__name__})") from None
    for number, line in enumerate(lines, 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not API_KEY.fullmatch(key):  # the message names the line, never the key
            raise SettingsError(
                f"api_keys_file {path}, line {number}: an API key must be 16 to 256 printable "
                "ASCII characters without spaces"
            )
        keys.append(key)
    return keys


def public_paths(server: ServerSettings) -> frozenset[str]:
    return PROBES | {METRICS} if server.public_metrics else PROBES


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request carries: `Authorization: Bearer <key>` first, else `X-API-Key`."""
    api_key = None
    for name, value in headers:
        if name == b"authorization" and value[: len(_BEARER)].lower() == _BEARER:
            return value[len(_BEARER) :].strip()
        if name == b"x-api-key":
            api_key = value.strip()
    return api_key


class KeyCheck:
    """The configured keys, as digests; `refusal` says why a presented key is refused (None: allowed)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k.encode("ascii")) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def allows(self, key: bytes | None) -> bool:
        if key is None:
            return False
        digest, found = _digest(key), False
        for known in self._digests:  # no early exit: every key is compared
            found |= hmac.compare_digest(digest, known)
        return found

    def refusal(self, key: bytes | None, *, how: str) -> ServeError | None:
        """None when `key` passes; else the 401 to answer. `how` says how this transport sends a key."""
        if not self.enabled or self.allows(key):
            return None
        if key is None:
            return ServeError(ErrorCode.UNAUTHORIZED, f"an API key is required: send {how}")
        return ServeError(ErrorCode.UNAUTHORIZED, "the API key is not valid")


class AuthMiddleware:
    def __init__(self, app: ASGIApp, *, keys: Iterable[str], public: frozenset[str]) -> None:
        self.app, self.public, self.check = app, public, KeyCheck(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.check.enabled or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope.get("headers") or [])
        refused = self.check.refusal(key, how="'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        if refused is None:
            if key is not None:
                scope.setdefault("state", {})[KEY_DIGEST_KEY] = _digest(key).hex()
            await self.app(scope, receive, send)
            return
        challenge = 'Bearer realm="perceiver-serve"' + ("" if key is None else ', error="invalid_token"')
        response = error_response(refused, {"WWW-Authenticate": challenge}, path=scope["path"])
        await response(scope, receive, send)


def document_auth(app: FastAPI, public: frozenset[str]) -> None:
    """Declare the two key schemes in the OpenAPI document, and a 401 on every protected operation."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(
            {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        )
        unauthorized = {
            "description": ErrorCode.UNAUTHORIZED.value,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
        }
        for path, operations in schema.get("paths", {}).items():
            if path in public:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                operation.setdefault("responses", {}).setdefault("401", unauthorized)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
