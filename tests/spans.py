"""An in-memory span exporter behind the process's one tracer provider, for tracing tests.

OpenTelemetry lets a process set its tracer provider once; the first test that asks sets it, and
each test clears the exporter before use. Skips when the `otel` extra is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_exporter: list[InMemorySpanExporter] = []


def memory_exporter() -> InMemorySpanExporter:
    """The shared exporter, emptied."""
    pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra: pip install .[otel]")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if not _exporter:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _exporter.append(exporter)
    _exporter[0].clear()
    return _exporter[0]
