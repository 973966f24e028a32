"""Optional OpenTelemetry tracing, shared by router and worker (`--otlp-endpoint URL`).

Off by default, and then nothing here is imported by a request: the handlers check their
config's `otlp_endpoint` and make no `RequestSpan`. On, the CLI calls `setup` once, which installs
the process's tracer provider with an OTLP/HTTP exporter (the `otel` extra: `pip install
.[otel]`); like logging handlers, only the CLI configures it, and code reads it through the
OpenTelemetry API. A router span's attempts pass their context to the worker as a W3C
`traceparent` header; the worker's span continues that trace.

Phases timed before their span could be opened (a queue wait, a prompt evaluation) become child
spans after the fact, from the start and end the caller measured on its own clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from contract.options import ConfigError

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

TRACEPARENT: Final = "traceparent"
INSTRUMENTATION: Final = "xero-router"
Clock = Callable[[], float]


def check_endpoint(url: str | None) -> None:
    """A ValueError naming `otlp_endpoint` unless `url` is None or an http(s) URL."""
    if url is None:
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"otlp_endpoint must be an http:// or https:// URL, got {url!r}")


def setup(endpoint: str, service: str) -> Callable[[], object]:
    """Export this process's spans to `endpoint` (OTLP/HTTP, e.g. http://host:4318/v1/traces),
    batched off the event loop; returns the shutdown that flushes them. ConfigError if the
    otel extra is not installed."""
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"--otlp-endpoint needs the otel extra (pip install 'xero-router[otel]'): {exc}"
        ) from None

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def _tracer() -> Tracer:
    from opentelemetry import trace

    return trace.get_tracer(INSTRUMENTATION)


class RequestSpan:
    """One request's span, with its phases as children."""

    __slots__ = ("_context", "_offset_ns", "span")

    def __init__(
        self,
        name: str,
        attributes: Mapping[str, Any],
        started: float,
        clock: Clock,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Opened as of `started` (a `clock` reading); continues the trace in `headers`'
        traceparent, if any."""
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = None
        if headers is not None and TRACEPARENT in headers:
            parent = TraceContextTextMapPropagator().extract({TRACEPARENT: headers[TRACEPARENT]})
        # `clock` readings to the wall-clock nanoseconds spans are stamped with: one offset,
        # so that phases which meet on the clock meet in the trace.
        self._offset_ns: Final = time.time_ns() - int(clock() * 1e9)
        self.span: Final[Span] = _tracer().start_span(
            name,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=dict(attributes),
            start_time=self._ns(started),
        )
        self._context = trace.set_span_in_context(self.span)

    def set(self, **attributes: Any) -> None:
        self.span.set_attributes(attributes)

    def phase(self, name: str, start: float, end: float, **attributes: Any) -> None:
        """A child span from `start` to `end` (`clock` readings), already over."""
        child = _tracer().start_span(
            name,
            context=self._context,
            attributes=attributes,
            start_time=self._ns(start),
        )
        child.end(self._ns(end))

    def _ns(self, at: float) -> int:
        return int(at * 1e9) + self._offset_ns

    @contextmanager
    def attempt(self, name: str, **attributes: Any) -> Iterator[Span]:
        """A child span over the block, current in it, so `inject` passes it on."""
        from opentelemetry import trace

        with _tracer().start_as_current_span(
            name, context=self._context, kind=trace.SpanKind.CLIENT, attributes=attributes
        ) as child:
            yield child

    def inject(self, headers: Mapping[str, str]) -> dict[str, str]:
        """`headers` plus the current span's traceparent (the attempt's, inside `attempt`)."""
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        sent = dict(headers)
        TraceContextTextMapPropagator().inject(sent)
        return sent

    def end(self, status: int, **attributes: Any) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attributes({"http.response.status_code": status, **attributes})
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
