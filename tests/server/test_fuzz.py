"""Schemathesis against the app's own OpenAPI document, in-process: for every operation, schema-valid and
schema-violating requests; no answer is a 5xx, every error is in the one error shape, and every answer is one
the route documents. Deterministic (derandomized); PERCEIVER_FUZZ_EXAMPLES=200 for a longer hunt."""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import build_app
from server.settings import build_settings
from tests.server.conftest import models_table

# No 5xx; every status the route answers is declared in its OpenAPI responses, with that body and media type.
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
EXAMPLES = int(os.environ.get("PERCEIVER_FUZZ_EXAMPLES", "10"))  # per operation and mode; more for a longer hunt


@pytest.fixture
def schema(checkpoints: dict[str, Path]) -> Iterator[Any]:
    """A fresh app per test: schemathesis' pytest plugin ends every ASGI lifespan after each test."""
    models = {n: m for n, m in models_table(checkpoints, max_delay_ms=0).items() if n != "offline"}  # 503 by design
    settings = build_settings(
        {"server": {"device": "cpu", "max_body_mb": 2, "request_timeout_s": 30}, "models": models}
    )
    loaded = schemathesis.openapi.from_asgi("/openapi.json", build_app(settings))  # runs the app's start-up
    try:
        yield loaded
    finally:
        asgi.shutdown_lifespans()


def check_error_shape(path: str, status: int, body: Any) -> None:
    if status < 400:
        return
    if path.startswith("/v2/") and set(body) == {"error"} and isinstance(body["error"], str):
        return  # the Open Inference Protocol's own error shape
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}, body
    assert body["error"]["status"] == status and body["error"]["message"], body


def operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]


def cases(operation: Any, mode: GenerationMode, models: list[str]) -> st.SearchStrategy[Any]:
    """The operation's cases, aimed at the configured models: random model names would all stop at a 404
    (the hostile tests cover those), so `?model=` is dropped and a `{name}` path parameter is a real model."""

    def aim(case: Any, model: str) -> Any:
        if case.query:
            case.query.pop("model", None)
        if case.path_parameters and "name" in case.path_parameters:
            case.path_parameters["name"] = model
        return case

    return st.tuples(operation.as_strategy(generation_mode=mode), st.sampled_from(models)).map(lambda t: aim(*t))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error_or_another_error_shape(schema: Any, mode: GenerationMode) -> None:
    failures: list[str] = []
    seen: Counter[int] = Counter()
    models = sorted(schema.app.state.settings.models)
    for operation in operations(schema):

        @given(case=cases(operation, mode, models))
        @hypothesis_settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call(timeout=60)
            seen[response.status_code] += 1
            try:
                probe_says_no = operation.path.endswith("/ready") and response.status_code == 503
                case.validate_response(response, checks=CHECKS[1:] if probe_says_no else CHECKS)
                if response.headers.get("content-type", [""])[0].startswith("application/json"):
                    check_error_shape(operation.path, response.status_code, json.loads(response.content))
                else:
                    assert response.status_code < 400, response.content[:200]
            except Exception as exc:
                failures.append(f"{operation.label} -> {response.status_code}: {exc}\n{case.as_curl_command()}")
                raise

        with contextlib.suppress(Exception, BaseExceptionGroup):  # recorded with its reproduction above;
            run()  # every operation still runs
    assert not failures, "\n\n".join(failures)
    assert sum(seen.values()) >= EXAMPLES * len(operations(schema)) // 2, seen  # it did run
    wanted = range(200, 300) if mode is GenerationMode.POSITIVE else range(400, 500)
    assert any(status in wanted for status in seen), seen
