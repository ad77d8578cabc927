"""OpenTelemetry plumbing shared by the gateway and the trainer: exporters and providers.

Each component builds its own `TracerProvider` (never the global one: several apps in one
test process must not see each other's spans). `otel_exporter="none"` means no provider.
"""

from __future__ import annotations

import os

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter


def make_exporter(kind: str, endpoint: str | None) -> SpanExporter:
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind == "otlp":
        # OTLP over HTTP/protobuf. `endpoint` is the collector's base URL, like
        # OTEL_EXPORTER_OTLP_ENDPOINT (http://collector:4318); unset, the OTEL_* variables decide.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if endpoint and not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return OTLPSpanExporter(endpoint=endpoint or None)
    raise ValueError(f"unknown otel_exporter {kind!r}: use none, console or otlp")


def make_provider(service_name: str) -> TracerProvider:
    # OTEL_SERVICE_NAME, when set, names the service (the SDK reads it itself).
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    return TracerProvider(resource=Resource.create(attributes))


def add_exporter(provider: TracerProvider, exporter: SpanExporter, *, batch: bool = True) -> None:
    """Export spans to `exporter` (tests: an InMemorySpanExporter with batch=False)."""
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
