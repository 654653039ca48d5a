"""Locust load test for perceiver-serve: every route the server serves, with realistic payloads.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000                  # web UI on :8089
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 32 -r 8 -t 1m \\
        --weight-classify-image 3 --weight-optical-flow 0

Routes are enabled when the server lists a model of that task in GET /v1/models and exposes the
route; each route's share of requests is its weight (`--weight-<route>` or `LOADTEST_WEIGHT_<ROUTE>`,
default 1; 0 disables it). A 429 (queue full) is reported as its own failure, apart from errors.
Payloads are synthesised once per process (texts with masks, images, frame pairs, clips), sized
for the model behind each route.
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

from locust import HttpUser, events, task
from locust.env import Environment

# Locust puts this file's folder on sys.path; the package imports below need the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.payloads import ROUTE_TASKS, Payload, build
from loadtest.target import TargetError, auth_headers, check_target, discover

log = logging.getLogger("loadtest")


def _option(route: str) -> str:
    return route.strip("/").replace("-", "_")


@events.init_command_line_parser.add_listener
def _arguments(parser: object) -> None:
    for route in ROUTE_TASKS:
        name = route.strip("/")
        parser.add_argument(
            f"--weight-{name}",
            type=float,
            default=1.0,  # type: ignore[attr-defined]
            env_var=f"LOADTEST_WEIGHT_{_option(route).upper()}",
            help=f"relative share of {route} requests (0 disables it)",
        )
    parser.add_argument(
        "--payloads",
        type=int,
        default=16,
        env_var="LOADTEST_PAYLOADS",  # type: ignore[attr-defined]
        help="distinct payloads synthesised per route",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        default=False,  # type: ignore[attr-defined]
        env_var="LOADTEST_ALLOW_REMOTE",
        help="allow a non-loopback --host (a server you own)",
    )
    parser.add_argument(
        "--api-key",
        default="",
        env_var="LOADTEST_API_KEY",  # type: ignore[attr-defined]
        help="sent as a Bearer token, for servers with api_keys",
    )


class Plan:
    """Routes to hit, their weights, and their payloads; built once per process and host."""

    host: str | None = None
    headers: dict[str, str] = {}
    routes: list[str] = []
    weights: list[float] = []
    payloads: dict[str, list[Payload]] = {}


@events.init.add_listener
def _plan_early(environment: Environment, **_: object) -> None:
    """With --host given, synthesise payloads before the run-time clock starts."""
    if environment.host:
        _plan(environment)


@events.test_start.add_listener
def _plan(environment: Environment, **_: object) -> None:
    if Plan.host == environment.host and Plan.routes:
        return
    options = environment.parsed_options
    try:
        base = check_target(environment.host or "", allow_remote=bool(options and options.allow_remote))
        targets = discover(base, headers=auth_headers(options.api_key if options else None))
    except TargetError as exc:
        log.error("%s", exc)
        _quit(environment)
        return
    routes, weights, payloads = [], [], {}
    for route, target in targets.items():
        weight = getattr(options, f"weight_{_option(route)}", 1.0) if options else 1.0
        if weight > 0:
            routes.append(route)
            weights.append(weight)
            payloads[route] = build(
                route, options.payloads if options else 16, target.shapes, seed=random.randrange(2**31)
            )
    if not routes:
        log.error("%s serves none of the routes with a positive weight (%s)", base, ", ".join(ROUTE_TASKS))
        _quit(environment)
        return
    Plan.host, Plan.routes, Plan.weights, Plan.payloads = environment.host, routes, weights, payloads
    Plan.headers = auth_headers(options.api_key if options else None)
    log.info("load-testing %s", ", ".join(f"{r} (weight {w:g})" for r, w in zip(routes, weights, strict=True)))


def _quit(environment: Environment) -> None:
    environment.process_exit_code = 2
    if environment.runner is not None:
        environment.runner.quit()


class PerceiverUser(HttpUser):
    """Sends back-to-back requests (no think time): each user is one closed-loop client."""

    def on_start(self) -> None:
        self.client.headers.update(Plan.headers)

    @task
    def infer(self) -> None:
        if not Plan.routes:
            return
        route = random.choices(Plan.routes, Plan.weights)[0]
        payload = random.choice(Plan.payloads[route])
        with self.client.post(route, name=route, catch_response=True, **payload.requests_kwargs()) as response:
            if response.status_code == 429:
                response.failure("overloaded (429): queue full")
            elif not response.ok:
                response.failure(f"{response.status_code}: {_message(response)}")
            else:
                response.success()


def _message(response: object) -> str:
    try:
        return str(response.json()["error"]["code"])  # type: ignore[attr-defined]
    except (ValueError, KeyError, TypeError):
        return (getattr(response, "text", "") or "")[:80]
