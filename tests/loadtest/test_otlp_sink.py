"""The load runner's OTLP/HTTP receiver accepts what the SDK's exporter sends, and counts it."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from loadtest.otlp_sink import otlp_sink


def test_the_sdk_exports_to_it() -> None:
    with otlp_sink() as (endpoint, received):
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("t").start_as_current_span("one"):
            pass
        provider.shutdown()
        span = provider.get_tracer("t").start_span("late")  # after shutdown: not exported
        span.end()
    assert received.exports == 1 and received.bytes > 20
    assert exporter.export([]) in (SpanExportResult.SUCCESS, SpanExportResult.FAILURE)  # no crash once closed
