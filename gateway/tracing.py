"""OpenTelemetry traces of completions, after the GenAI semantic conventions.

One SERVER span per completion request (`chat {model}` / `text_completion {model}`), with
children for resolving the model, loading an adapter (only when this request triggered a
load) and the engine call, whose context travels to vLLM as a W3C `traceparent` header.
A client's own `traceparent` is honoured: the request span joins the client's trace.

Each `Services` has its own `TracerProvider` (core.otel). With `otel_exporter="none"` there
is no provider at all: requests get a shared do-nothing object and pay one attribute check.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from core.otel import add_exporter, make_exporter, make_provider
from gateway.metrics import CLIENT_CLOSED, error_type

if TYPE_CHECKING:
    from gateway.interaction_log import InteractionRecord

OPERATION = {"chat": "chat", "completion": "text_completion"}
# Request parameters recorded when the client gave them: body key -> attribute.
REQUEST_PARAMS = (
    ("temperature", "gen_ai.request.temperature"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("top_p", "gen_ai.request.top_p"),
)
_PROPAGATOR = TraceContextTextMapPropagator()
_NULL = contextlib.nullcontext()


class Tracing:
    def __init__(self, settings: Any) -> None:
        self.base_model = settings.base_model_name
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None
        kind = settings.otel_exporter
        if kind != "none":
            self.add_exporter(make_exporter(kind, settings.otel_endpoint))

    def add_exporter(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        """Export spans to `exporter` (tests: an InMemorySpanExporter with batch=False)."""
        if self.provider is None:
            self.provider = make_provider("tailor-gateway")
            self.tracer = self.provider.get_tracer("tailor.gateway")
        add_exporter(self.provider, exporter, batch=batch)

    def shutdown(self) -> None:
        """Flush what is buffered and stop the exporters."""
        if self.provider is not None:
            self.provider.shutdown()

    def start(self, kind: str, record: InteractionRecord, body: Mapping[str, Any], request: Any) -> Any:
        """The request's spans (`request`: Starlette's, for a client's traceparent)."""
        if self.tracer is None:
            return UNTRACED
        return RequestSpan(self.tracer, self.base_model, kind, record, body, request.headers)

    # --- engine pool events (run in the task that loads, whose context is the request's)
    def adapter_loaded(self, engine: str, name: str, seconds: float, ok: bool) -> None:
        if self.tracer is None:
            return
        end = time.time_ns()
        span = self.tracer.start_span(
            "adapter load",
            start_time=end - int(seconds * 1e9),
            attributes={"tailor.engine": engine, "tailor.adapter_version": name},
        )
        if not ok:
            span.set_status(Status(StatusCode.ERROR, "adapter load failed"))
        span.end(end_time=end)

    def adapter_evicted(self, engine: str, name: str) -> None:
        if self.tracer is None:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("adapter evicted", {"tailor.engine": engine, "tailor.adapter_version": name})


class RequestSpan:
    """The spans of one traced request; `finish` ends them."""

    __slots__ = ("tracer", "base_model", "span", "context", "engine_span")

    def __init__(
        self,
        tracer: trace.Tracer,
        base_model: str,
        kind: str,
        record: InteractionRecord,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> None:
        self.tracer = tracer
        self.base_model = base_model
        operation = OPERATION[kind]
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": record.model,
            "gen_ai.response.id": record.id,
            "tailor.interaction_id": record.id,
            "tailor.tenant": record.tenant_id,
        }
        for key, attribute in REQUEST_PARAMS:
            value = body.get(key)
            if value is not None:
                attributes[attribute] = value
        # The request span is the server's entry span: a child of the client's trace when
        # it sent one, otherwise a root (never of whatever happens to be current).
        parent = _PROPAGATOR.extract(headers) if "traceparent" in headers else otel_context.Context()
        self.span = tracer.start_span(
            f"{operation} {record.model}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        self.context = trace.set_span_in_context(self.span)
        self.engine_span: trace.Span | None = None
        # Current for the rest of this request's task and the tasks it starts (an adapter
        # load, the response stream): their spans and log lines belong to this request.
        # Not detached: the server runs each request in its own task.
        otel_context.attach(self.context)

    def step(self, name: str) -> AbstractContextManager[Any]:
        return self.tracer.start_as_current_span(name, context=self.context)

    def engine_headers(self, url: str, path: str, headers: dict[str, str]) -> dict[str, str]:
        """Start the engine-call span; `headers` plus the trace context for the engine."""
        if self.engine_span is not None:
            # The call moved to another engine: the attempt on the one before ends here, failed.
            self.engine_span.set_status(Status(StatusCode.ERROR, "the engine's connection failed"))
            self.engine_span.end()
        span = self.engine_span = self.tracer.start_span(
            f"POST {path}",
            context=self.context,
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "url.full": url + path, "tailor.engine": url},
        )
        ctx = span.get_span_context()
        out = {**headers, "traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
        if ctx.trace_state:
            out["tracestate"] = ctx.trace_state.to_header()
        return out

    def finish(self, record: InteractionRecord) -> None:
        status = record.status_code
        attributes: dict[str, Any] = {"http.response.status_code": status}
        if record.adapter_version_id is not None:
            attributes["tailor.adapter_version"] = record.adapter_version_id
        if record.engine is not None:
            # The model that generated the answer, as the engine knows it.
            attributes["gen_ai.response.model"] = record.adapter_version_id or record.model or self.base_model
        if record.prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = record.prompt_tokens
        if record.completion_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = record.completion_tokens
        if record.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = (record.finish_reason,)
        if status >= 400:
            attributes["error.type"] = error_type(status)
        self.span.set_attributes(attributes)
        # Server spans: only 5xx are the gateway's failures (OpenTelemetry HTTP conventions).
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR, record.error))
        engine = self.engine_span
        if engine is not None:
            engine.set_attribute("http.response.status_code", status)
            if status >= 400 and status != CLIENT_CLOSED:
                engine.set_status(Status(StatusCode.ERROR, record.error))
            engine.end()
        self.span.end()


class _Untraced:
    """What a request gets when tracing is off: every call does nothing, nothing is allocated."""

    __slots__ = ()

    def step(self, name: str) -> AbstractContextManager[Any]:
        return _NULL

    def engine_headers(self, url: str, path: str, headers: dict[str, str]) -> dict[str, str]:
        return headers

    def finish(self, record: InteractionRecord) -> None:
        pass


UNTRACED = _Untraced()
