"""Gateway telemetry: OpenTelemetry spans, the trace context the engine receives, exporters,
and the JSON log formatter.

Runs the real app against gateway_world's fake vLLM (no engine), through tests/gateway/
telemetry_world.py: spans are collected with an InMemorySpanExporter and the headers the
engine received are captured with an httpx request hook.
"""

from __future__ import annotations

import json
import logging
import sys
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from core.otel import make_exporter
from gateway.telemetry import INTERACTION_ID, JsonFormatter
from gateway.tracing import Tracing
from tests.gateway.gateway_world import BASE, CHAT, COMPLETION, ENGINE
from tests.gateway.telemetry_world import Traced, by_name, new_tenant, register_adapter, traced_fixtures

pytestmark = pytest.mark.asyncio(loop_scope="module")

traced, t = traced_fixtures()


# --------------------------------------------------------------------------- traces


async def test_request_span_has_genai_attributes_and_engine_gets_traceparent(t: Traced) -> None:
    run = t.run
    tenant_id, _, auth = await new_tenant(run)
    body = {**CHAT, "temperature": 0.5, "top_p": 0.9, "max_tokens": 12}
    r = await run.http.post("/v1/chat/completions", json=body, headers=auth)
    assert r.status_code == 200
    interaction_id = r.headers["x-tailor-interaction-id"]

    spans = t.spans.get_finished_spans()
    [server] = by_name(spans, f"chat {BASE}")
    assert server.kind == SpanKind.SERVER
    assert server.parent is None
    attrs = dict(server.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == BASE
    assert attrs["gen_ai.response.model"] == BASE
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["gen_ai.request.top_p"] == 0.9
    assert attrs["gen_ai.request.max_tokens"] == 12
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (37, 8)
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["tailor.tenant"] == tenant_id
    assert attrs["tailor.interaction_id"] == interaction_id
    assert attrs["http.response.status_code"] == 200
    assert server.status.status_code == StatusCode.UNSET

    [resolve] = by_name(spans, "resolve model")
    [engine] = by_name(spans, "POST /v1/chat/completions")
    for child in (resolve, engine):
        assert child.parent is not None and child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
    assert engine.kind == SpanKind.CLIENT
    assert engine.attributes["url.full"] == ENGINE + "/v1/chat/completions"

    [sent] = [q for q in t.upstream if q.url.path == "/v1/chat/completions"]
    ctx = engine.context
    assert sent.headers["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert ctx.trace_flags.sampled


async def test_stream_and_adapter_spans(t: Traced) -> None:
    run = t.run
    tenant_id, _, auth = await new_tenant(run)
    version_id = register_adapter(run, tenant_id, "helper")
    r = await run.http.post("/v1/chat/completions", json={**CHAT, "model": "helper", "stream": True}, headers=auth)
    assert r.status_code == 200 and "[DONE]" in r.text
    r = await run.http.post("/v1/completions", json=COMPLETION, headers=auth)
    assert r.status_code == 200

    spans = t.spans.get_finished_spans()
    [chat] = by_name(spans, "chat helper")
    assert chat.attributes["gen_ai.request.model"] == "helper"
    assert chat.attributes["gen_ai.response.model"] == version_id
    assert chat.attributes["tailor.adapter_version"] == version_id
    assert chat.attributes["gen_ai.usage.output_tokens"] == 8
    assert "gen_ai.request.temperature" not in chat.attributes
    [load] = by_name(spans, "adapter load")
    assert load.parent.span_id == chat.context.span_id and load.attributes["tailor.adapter_version"] == version_id
    [completion] = by_name(spans, f"text_completion {BASE}")
    assert completion.attributes["gen_ai.operation.name"] == "text_completion"
    assert completion.attributes["gen_ai.request.max_tokens"] == COMPLETION["max_tokens"]
    # The engine's load call is not a completion: it carries no trace context.
    assert all("traceparent" not in q.headers for q in t.upstream if q.url.path == "/v1/load_lora_adapter")


async def test_client_trace_is_continued_and_errors_are_marked(t: Traced) -> None:
    run = t.run
    _, _, auth = await new_tenant(run)
    client_trace, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    traceparent = f"00-{client_trace}-{client_span}-01"
    r = await run.http.post("/v1/chat/completions", json=CHAT, headers={**auth, "traceparent": traceparent})
    assert r.status_code == 200
    r = await run.http.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=auth)
    assert r.status_code == 404
    t.run.fake.script.append(httpx.ConnectError("refused"))
    r = await run.http.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert r.status_code == 503
    run.services.pool.engines[0].healthy = True  # marked down by the failure

    spans = t.spans.get_finished_spans()
    ok, failing = by_name(spans, f"chat {BASE}")
    assert f"{ok.context.trace_id:032x}" == client_trace
    assert f"{ok.parent.span_id:016x}" == client_span and ok.parent.is_remote

    [missing] = by_name(spans, "chat nope")
    assert missing.attributes["error.type"] == "not_found_error"
    assert missing.attributes["http.response.status_code"] == 404
    assert missing.status.status_code == StatusCode.UNSET  # a client error, not the server's
    assert "gen_ai.response.model" not in missing.attributes
    assert [s.name for s in spans if s.parent and s.parent.span_id == missing.context.span_id] == ["resolve model"]

    assert failing.status.status_code == StatusCode.ERROR
    assert failing.attributes["error.type"] == "service_unavailable_error"
    [engine] = [s for s in by_name(spans, "POST /v1/chat/completions") if s.parent.span_id == failing.context.span_id]
    assert engine.status.status_code == StatusCode.ERROR


async def test_exporters_from_settings() -> None:
    tracing = Tracing(SimpleNamespace(base_model_name="b", otel_exporter="console", otel_endpoint=None))
    assert tracing.provider is not None
    tracing.shutdown()
    assert Tracing(SimpleNamespace(base_model_name="b", otel_exporter="none", otel_endpoint=None)).provider is None
    exporter = make_exporter("otlp", "http://collector:4318")
    assert exporter._endpoint == "http://collector:4318/v1/traces"
    exporter.shutdown()
    with pytest.raises(ValueError):
        make_exporter("zipkin", None)


# --------------------------------------------------------------------------- logs


async def test_json_log_lines_carry_interaction_and_trace_ids() -> None:
    formatter = JsonFormatter()

    def line(msg: str, **extra: Any) -> dict[str, Any]:
        record = logging.LogRecord(
            "tailor.test", logging.WARNING, __file__, 1, msg, ("x",) if "%" in msg else None, None
        )
        record.__dict__.update(extra)
        return json.loads(formatter.format(record))

    plain = line("hello %s")
    assert plain["message"] == "hello x" and plain["level"] == "WARNING" and plain["logger"] == "tailor.test"
    assert "trace_id" not in plain

    token = INTERACTION_ID.set("chatcmpl-abc")
    try:
        span = trace.NonRecordingSpan(
            trace.SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=False, trace_flags=trace.TraceFlags(1))
        )
        with trace.use_span(span):
            got = line("in a request", engine="http://e:1")
    finally:
        INTERACTION_ID.reset(token)
    assert got["interaction_id"] == "chatcmpl-abc"
    assert got["trace_id"] == f"{0xABC:032x}" and got["span_id"] == f"{0xDEF:016x}"
    assert got["engine"] == "http://e:1"

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert "RuntimeError: boom" in json.loads(formatter.format(record))["exception"]
