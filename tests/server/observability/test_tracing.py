"""OpenTelemetry spans of the real app, caught by the SDK's in-memory exporter: the tree of one request, a batch's
links to each of its requests, the client's trace kept, no spans for probes; and the OTEL_* configuration."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from server.app import build_app
from server.observability.tracing import Tracing, TracingError, from_environment
from server.settings import Settings
from tests.server.support import open_client

pytestmark = pytest.mark.anyio
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], exporter: InMemorySpanExporter
) -> AsyncIterator[httpx.AsyncClient]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # A batch forms when requests arrive within max_delay of each other.
    app = build_app(make_settings(max_delay_ms=300), tracing=Tracing(provider))
    async with open_client(app) as c:
        await c.post("/fill-mask", json={"inputs": "warm[MASK]"})  # the model loads outside the measured requests
        exporter.clear()
        yield c


def tree(spans: tuple[ReadableSpan, ...], root: ReadableSpan) -> dict[str, Any]:
    children = sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
        key=lambda s: s.start_time or 0,
    )
    return {root.name: [tree(spans, c) for c in children]}


def only_root(spans: tuple[ReadableSpan, ...]) -> ReadableSpan:
    roots = [s for s in spans if s.kind.name == "SERVER"]
    assert len(roots) == 1, [s.name for s in spans]
    return roots[0]


async def test_one_request_gives_the_span_tree(client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    r = await client.post("/fill-mask", json={"inputs": "Hello [MASK]orld"})
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    root = only_root(spans)
    assert tree(spans, root) == {
        "POST /fill-mask": [{"admission": []}, {"decode": []}, {"queue": []}, {"forward": []}, {"encode": []}]
    }
    attributes = dict(root.attributes or {})
    assert attributes["http.route"] == "/fill-mask" and attributes["http.response.status_code"] == 200
    assert attributes["perceiver.model"] == "mlm" and attributes["perceiver.request_id"] == r.headers["x-request-id"]
    assert attributes["perceiver.batch_size"] == 1
    # Every step lies within the request.
    for span in spans:
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, span.name  # type: ignore[operator]


async def test_a_media_request_has_its_decode_step(client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    from tests.server.test_app import image_bytes

    r = await client.post("/classify-image", content=image_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    names = tree(spans, only_root(spans))["POST /classify-image"]
    assert {"decode": []} in names and {"forward": []} in names and {"encode": []} in names


async def test_a_batch_of_three_links_all_three(client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    answers = await asyncio.gather(*(client.post("/fill-mask", json={"inputs": f"{i} [MASK]"}) for i in range(3)))
    assert all(a.status_code == 200 for a in answers)
    assert {a.headers["X-Batch-Size"] for a in answers} == {"3"}
    spans = exporter.get_finished_spans()
    requests = [s for s in spans if s.kind.name == "SERVER"]
    (forward,) = [s for s in spans if s.name == "forward"]
    assert len(requests) == 3
    assert {link.context.span_id for link in forward.links} == {s.context.span_id for s in requests}
    assert forward.parent is not None and forward.parent.span_id in {s.context.span_id for s in requests}
    assert dict(forward.attributes or {})["perceiver.batch_size"] == 3
    queues = [s for s in spans if s.name == "queue"]
    assert sorted(q.parent.span_id for q in queues if q.parent) == sorted(s.context.span_id for s in requests)


async def test_a_clients_trace_is_kept_and_returned(client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
    r = await client.post("/fill-mask", json={"inputs": "x[MASK]"}, headers={"traceparent": traceparent})
    root = only_root(exporter.get_finished_spans())
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE
    assert root.parent is not None and f"{root.parent.span_id:016x}" == CLIENT_PARENT
    version, trace_id, span_id, flags = r.headers["traceparent"].split("-")
    assert (version, trace_id, span_id, flags) == ("00", CLIENT_TRACE, f"{root.context.span_id:016x}", "01")


async def test_errors_mark_the_span(client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    assert (await client.post("/fill-mask?model=offline", json={"inputs": "x[MASK]"})).status_code == 503
    root = only_root(exporter.get_finished_spans())
    assert root.status.status_code.name == "ERROR" and dict(root.attributes or {})["perceiver.model"] == "offline"
    exporter.clear()
    assert (await client.post("/fill-mask", json={"inputs": 3})).status_code == 422
    assert only_root(exporter.get_finished_spans()).status.status_code.name == "UNSET"  # the client's mistake


async def test_probes_and_scrapes_have_no_spans(client: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"):
        r = await client.get(path)
        assert r.status_code == 200 and "traceparent" not in r.headers
    assert exporter.get_finished_spans() == ()


async def test_tracing_off_adds_no_header(make_settings: Callable[..., Settings]) -> None:
    async with open_client(build_app(make_settings(), tracing=Tracing())) as c:
        r = await c.post("/fill-mask", json={"inputs": "x[MASK]"}, headers={"traceparent": f"00-{CLIENT_TRACE}-a-01"})
    assert r.status_code == 200 and "traceparent" not in r.headers


async def test_requests_the_sampler_drops_answer_as_usual_and_record_nothing(
    make_settings: Callable[..., Settings], exporter: InMemorySpanExporter
) -> None:
    """With a sampler (OTEL_TRACES_SAMPLER), most requests are not sampled: their spans are non-recording. They must
    be answered as any other, say they were not sampled, and record nothing; a sampled client's trace still is."""
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with open_client(build_app(make_settings(), tracing=Tracing(provider))) as c:
        texts = ["a[MASK]", "bb[MASK]", "ccc[MASK]"]
        answers = await asyncio.gather(*(c.post("/fill-mask", json={"inputs": t}) for t in texts))
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert all(int(a.headers["traceparent"][-2:], 16) & 1 == 0 for a in answers)  # the sampled flag is off
        assert exporter.get_finished_spans() == ()
        sampled = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"  # the client's sampled trace: parent-based keeps it
        r = await c.post("/fill-mask", json={"inputs": "d[MASK]"}, headers={"traceparent": sampled})
    assert r.status_code == 200 and r.headers["traceparent"].startswith(f"00-{CLIENT_TRACE}-")
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert "POST /fill-mask" in names and "forward" in names and "queue" in names


# ---------------------------------------------------------------- configuration by OTEL_* variables


def exporters_of(tracing: Tracing) -> list[str]:
    processors = tracing.provider._active_span_processor._span_processors
    assert all(isinstance(p, BatchSpanProcessor) for p in processors)
    return [
        type(p._batch_processor._exporter).__module__ + "." + type(p._batch_processor._exporter).__name__
        for p in processors
    ]


def test_no_variables_no_tracing() -> None:
    assert not from_environment({}).enabled
    assert not from_environment({"OTEL_TRACES_EXPORTER": "none"}).enabled
    assert not from_environment({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}).enabled


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"OTEL_TRACES_EXPORTER": "console"}, ["opentelemetry.sdk.trace.export.ConsoleSpanExporter"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["opentelemetry.exporter.otlp.proto.http"]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ["opentelemetry.exporter.otlp.proto.grpc"],
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            ["opentelemetry.exporter.otlp.proto.http", "opentelemetry.sdk.trace.export.ConsoleSpanExporter"],
        ),
    ],
)
def test_exporters_follow_the_standard_variables(environ: dict[str, str], expected: list[str]) -> None:
    tracing = from_environment(environ)
    try:
        got = exporters_of(tracing)
        assert len(got) == len(expected)
        assert all(g.startswith(e) for g, e in zip(got, expected, strict=True)), got
    finally:
        tracing.shutdown()


def test_the_service_name_defaults_to_the_servers_and_yields_to_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    tracing = from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing.provider.resource.attributes["service.name"] == "perceiver-serve"
    tracing.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mlm-east")  # the SDK's resource detector reads the process environment
    tracing = from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing.provider.resource.attributes["service.name"] == "mlm-east"
    tracing.shutdown()


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "use otlp, console or none"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "use grpc or http/protobuf"),
    ],
)
def test_unsupported_choices_are_settings_errors(environ: dict[str, str], needle: str) -> None:
    with pytest.raises(TracingError, match=needle):
        from_environment(environ)


def test_the_app_reads_the_environment(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    app = build_app(make_settings())
    assert app.state.service.tracing.enabled
    assert exporters_of(app.state.service.tracing) == ["opentelemetry.sdk.trace.export.ConsoleSpanExporter"]
    app.state.service.tracing.shutdown()


def test_asking_for_traces_without_the_extra_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.observability.tracing as tracing_module

    monkeypatch.setattr(tracing_module, "trace", None)  # as when the otel extra is not installed
    assert not tracing_module.from_environment({}).enabled  # nothing asked: nothing needed
    with pytest.raises(TracingError, match=r"perceiver-serve\[otel\]"):
        tracing_module.from_environment({"OTEL_TRACES_EXPORTER": "otlp"})
