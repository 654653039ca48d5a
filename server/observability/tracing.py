"""OpenTelemetry traces (the `otel` extra), configured only by the standard OTEL_* environment variables.

Spans of one request: the request (a server span, its parent taken from the client's W3C `traceparent`, which the
answer carries back), `admission`, `decode`, `queue` (enqueue to batch start), `forward` (the batch: a child of the
request that opened it, linked to every request in it) and `encode`. Probes and scrapes have none. Without a tracer
provider every method returns at once: tracing off costs a branch per step.

Environment (the SDK's names): OTEL_TRACES_EXPORTER = otlp | console | none, comma-separated (default: otlp when an
OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set, else no tracing); OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL = grpc |
http/protobuf (default http/protobuf); OTEL_SDK_DISABLED=true turns it all off. The exporters, the sampler
(OTEL_TRACES_SAMPLER), the batch processor (OTEL_BSP_*) and the resource (OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES) read the rest of their settings themselves.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, Status, StatusCode
except ImportError:  # the otel extra is not installed: tracing stays off
    trace = None  # type: ignore[assignment]

from server.settings import SettingsError

SERVICE_NAME = "perceiver-serve"
_PROPAGATED = frozenset({b"traceparent", b"tracestate", b"baggage"})  # what the propagators read (names: lowercase)
Attributes = Mapping[str, str | int | float | bool]


class TracingError(SettingsError):
    """OTEL_* variables that ask for what cannot be done (an unknown exporter, the extra not installed)."""


class Tracing:
    """The server's spans, from `provider` (an SDK TracerProvider), or none at all."""

    def __init__(self, provider: Any = None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("perceiver-serve") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start_request(self, name: str, headers: Sequence[tuple[bytes, bytes]], attributes: Attributes) -> Any:
        """A server span for a request (the client's `traceparent` its parent), made current by `activate`."""
        assert self._tracer is not None
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in _PROPAGATED}
        parent = propagate.extract(carrier) if carrier else None
        return self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)

    def activate(self, span: Any) -> Any:
        """Make `span` the current one for this task until `deactivate(token)`."""
        return otel_context.attach(trace.set_span_in_context(span))

    def deactivate(self, token: Any) -> None:
        otel_context.detach(token)

    @staticmethod
    def finish_request(span: Any, *, route: str | None, status: int, attributes: Attributes) -> None:
        if not span.is_recording():  # not sampled (OTEL_TRACES_SAMPLER): nothing to name or record
            span.end()
            return
        if route:
            span.update_name(f"{span.name.split(' ', 1)[0]} {route}")
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        span.set_attributes(attributes)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    @staticmethod
    def response_headers(span: Any) -> list[tuple[bytes, bytes]]:
        """`traceparent` (and `tracestate`) of the request's span, for the answer (W3C Trace Context)."""
        context = span.get_span_context()
        parent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        headers = [(b"traceparent", parent.encode("ascii"))]
        if context.trace_state:
            headers.append((b"tracestate", context.trace_state.to_header().encode("latin-1")))
        return headers

    def step(self, name: str, **attributes: str | int | float | bool) -> Any:
        """A child span of the current request's span for the block; nothing outside a traced request."""
        if self._tracer is None or not trace.get_current_span().is_recording():  # untraced, or not sampled
            return nullcontext()
        return self._tracer.start_as_current_span(name, attributes=attributes)

    def current(self) -> Any:
        """The current request span's context (None when not traced), kept with each queued item."""
        if self._tracer is None:
            return None
        context = trace.get_current_span().get_span_context()
        return context if context.is_valid and context.trace_flags.sampled else None

    def record_batch(
        self, requests: Sequence[tuple[Any, float]], *, started: float, finished: float, attributes: Attributes
    ) -> None:
        """Spans for a batch that ran from `started` to `finished` (time.monotonic()): for each traced request,
        given as (span context, time.monotonic() at enqueue), its `queue` wait; and `forward`, a child of the first
        request, linked to all of them."""
        if self._tracer is None:
            return
        to_ns = _wall_clock()
        first_enqueue: dict[tuple[int, int], tuple[Any, float]] = {}  # (trace, span) -> (context, first enqueue)
        for context, enqueued in requests:
            if context is not None:
                key = (context.trace_id, context.span_id)
                first_enqueue[key] = (context, min(enqueued, first_enqueue.get(key, (context, enqueued))[1]))
        if not first_enqueue:
            return
        for context, enqueued in first_enqueue.values():
            parent = trace.set_span_in_context(NonRecordingSpan(context))
            self._tracer.start_span("queue", context=parent, start_time=to_ns(enqueued)).end(end_time=to_ns(started))
        contexts = [context for context, _ in first_enqueue.values()]
        forward = self._tracer.start_span(
            "forward",
            context=trace.set_span_in_context(NonRecordingSpan(contexts[0])),
            links=[Link(c) for c in contexts],
            start_time=to_ns(started),
            attributes={**attributes, "perceiver.batch.requests": len(contexts)},
        )
        forward.end(end_time=to_ns(finished))

    def shutdown(self) -> None:
        """Export what is buffered and stop (at the end of the app's lifespan)."""
        if self.provider is not None:
            self.provider.shutdown()


def _wall_clock() -> Any:
    """time.monotonic() -> nanoseconds since the epoch (what spans are stamped with)."""
    offset = time.time_ns() - time.monotonic_ns()
    return lambda t: int(t * 1e9) + offset


def from_environment(environ: Mapping[str, str]) -> Tracing:
    """Tracing as the OTEL_* variables in `environ` configure it (off when they ask for no exporter)."""
    exporters = _exporter_names(environ)
    if not exporters:
        return Tracing()
    if trace is None:
        raise TracingError(
            f"OTEL_TRACES_EXPORTER asks for {','.join(exporters)} but OpenTelemetry is not installed: "
            "pip install 'perceiver-serve[otel]'"
        )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    return Tracing(provider)


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        names = ["otlp"]
    return [n for n in names if n != "none"]


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingError(f"OTEL_TRACES_EXPORTER={name!r} is not supported; use otlp, console or none")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (protocol or "http/protobuf").strip()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCExporter

            return GRPCExporter()
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

            return HTTPExporter()
    except ImportError as exc:
        raise TracingError(
            f"the OTLP {protocol} exporter is not installed ({exc.name}): pip install 'perceiver-serve[otel]'"
        ) from exc
    raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use grpc or http/protobuf")
