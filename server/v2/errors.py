"""OpenAPI declarations of the /v2 errors: the protocol's `{"error": "message"}` (rendered by server.errors, which
chooses the shape by path), with the statuses of server.errors."""

from __future__ import annotations

from typing import Any

from server.errors import STATUS, ErrorCode
from server.v2.protocol import V2Error


def v2_responses(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a /v2 route."""
    return {STATUS[c]: {"model": V2Error, "description": c.value} for c in codes}
