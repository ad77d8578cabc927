"""Gateway telemetry: /metrics, OpenTelemetry spans and the JSON log formatter.

Runs the real app against gateway_world's fake vLLM (no engine): requests go through the
proxy, /metrics is scraped and parsed, spans are collected with an InMemorySpanExporter
and the headers the engine received are captured with an httpx request hook.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from adapters import registry
from core.ids import new_id, utcnow
from core.models import Interaction, Job
from core.otel import make_exporter
from gateway import tenants
from gateway.interaction_log import InteractionRecord
from gateway.routes import metrics as metrics_route
from gateway.telemetry import INTERACTION_ID, JsonFormatter
from gateway.tracing import Tracing
from tests.gateway.gateway_world import (
    ADMIN,
    BASE,
    CHAT,
    COMPLETION,
    ENGINE,
    Running,
    running_gateway,
    write_tiny_adapter,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

_serial = itertools.count()


@dataclass
class Traced:
    run: Running
    spans: InMemorySpanExporter
    upstream: list[httpx.Request]  # every request the gateway sent to the engine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Traced]:
    # Tenant labels on, so the per-tenant series below can be checked by tenant name.
    async with running_gateway(tmp_path_factory.mktemp("telemetry"), metrics_tenant_labels=True) as run:
        exporter = InMemorySpanExporter()
        run.services.telemetry.tracing.add_exporter(exporter, batch=False)
        upstream: list[httpx.Request] = []

        async def capture(request: httpx.Request) -> None:
            upstream.append(request)

        run.services.client.event_hooks = {"request": [capture], "response": []}
        yield Traced(run, exporter, upstream)


@pytest_asyncio.fixture(loop_scope="module")
async def t(traced: Traced) -> AsyncIterator[Traced]:
    traced.spans.clear()
    traced.upstream.clear()
    traced.run.fake.reset()
    yield traced


async def new_tenant(run: Running) -> tuple[str, str, dict[str, str]]:
    """A fresh tenant with a key: its id, its name and the Authorization header."""
    name = f"tel{next(_serial)}"
    r = await run.http.post("/admin/tenants", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    r2 = await run.http.post(f"/admin/tenants/{name}/keys", json={}, headers=ADMIN)
    assert r2.status_code == 201, r2.text
    return r.json()["id"], name, {"authorization": f"Bearer {r2.json()['key']}"}


def register_adapter(run: Running, tenant_id: str, name: str) -> str:
    source = write_tiny_adapter(run.tmp / f"src-{name}-{next(_serial)}")
    s = run.services
    info = registry.register_dir(
        s.db, s.store, s.limits, tenant_id=tenant_id, name=name, source_dir=source, base_model_name=BASE, actor="test"
    )
    s.changed()
    return info.id


def with_metrics_route(run: Running) -> None:
    # Until gateway/app.py includes the router itself.
    if not any(getattr(route, "path", None) == "/metrics" for route in run.app.routes):
        run.app.include_router(metrics_route.router)


async def exposition(run: Running) -> str:
    """/metrics as Prometheus reads it; no credentials needed."""
    with_metrics_route(run)
    r = await run.http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


async def scrape(run: Running) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics as {sample name: {sorted label pairs: value}}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(await exposition(run)):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: dict[str, Any], name: str, **labels: str) -> float:
    return metrics.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


# --------------------------------------------------------------------------- metrics


async def test_metrics_count_requests_by_endpoint_status_tenant_and_model(t: Traced) -> None:
    run = t.run
    tenant_id, name, auth = await new_tenant(run)
    for body in ({**CHAT}, {**CHAT, "stream": True}):
        assert (await run.http.post("/v1/chat/completions", json=body, headers=auth)).status_code == 200
    assert (await run.http.post("/v1/completions", json=COMPLETION, headers=auth)).status_code == 200
    r = await run.http.post("/v1/chat/completions", json={**CHAT, "model": "made-up-name"}, headers=auth)
    assert r.status_code == 404

    m = await scrape(run)
    chat_ok = dict(endpoint="chat.completions", status_class="2xx", tenant=name, model=BASE)
    assert value(m, "tailor_requests_total", **chat_ok) == 2
    assert value(m, "tailor_request_duration_seconds_count", **chat_ok) == 2
    assert value(m, "tailor_request_duration_seconds_bucket", **chat_ok, le="+Inf") == 2
    completion_ok = {**chat_ok, "endpoint": "completions"}
    assert value(m, "tailor_requests_total", **completion_ok) == 1
    # Only streams have a first token to time.
    assert (
        value(m, "tailor_time_to_first_token_seconds_count", endpoint="chat.completions", tenant=name, model=BASE) == 1
    )
    # A model name that never resolved is not a label value of its own.
    missing = dict(endpoint="chat.completions", status_class="4xx", tenant=name, model="other")
    assert value(m, "tailor_requests_total", **missing) == 1
    assert not any(dict(k).get("model") == "made-up-name" for k in m["tailor_requests_total"])
    assert value(m, "tailor_errors_total", endpoint="chat.completions", type="not_found_error") >= 1

    await run.services.interactions.flush()
    with run.services.db.session() as s:
        rows = list(s.query(Interaction).filter(Interaction.tenant_id == tenant_id))
    prompt = sum(r.prompt_tokens or 0 for r in rows)
    completion = sum(r.completion_tokens or 0 for r in rows)
    assert prompt > 0 and completion > 0
    assert value(m, "tailor_tokens_total", type="input", tenant=name, model=BASE) == prompt
    assert value(m, "tailor_tokens_total", type="output", tenant=name, model=BASE) == completion
    assert tenant_id not in await exposition(run)  # named, never by internal id

    assert value(m, "tailor_requests_in_flight", endpoint="chat.completions") == 0
    assert value(m, "tailor_engine_healthy", engine=ENGINE) == 1
    assert value(m, "tailor_engine_inflight", engine=ENGINE) == 0
    assert "tailor_interaction_log_queue_depth" in m
    assert value(m, "tailor_interaction_log_dropped_total") == 0
    assert "process_cpu_seconds_total" in m


def _job(tenant_id: str, status: str, **times: datetime) -> Job:
    """A job row in `status`, as the metrics read it from the jobs table."""
    return Job(
        id=new_id("ftjob"),
        tenant_id=tenant_id,
        status=status,
        method="supervised",
        model=BASE,
        adapter_name="a",
        hyperparameters={},
        **times,
    )


async def test_job_queue_depth_is_counted_at_scrape_time(t: Traced) -> None:
    run = t.run
    tenant_id, _, _ = await new_tenant(run)
    before = await scrape(run)
    with run.services.db.session() as s:
        for status in ("queued", "queued", "running", "succeeded"):
            s.add(_job(tenant_id, status))
    after = await scrape(run)
    for status, added in (("queued", 2), ("running", 1), ("validating_files", 0)):
        assert value(after, "tailor_jobs", status=status) == value(before, "tailor_jobs", status=status) + added
    assert value(after, "tailor_jobs", status="succeeded") == 0  # finished jobs are not a queue


async def test_job_durations_come_from_the_jobs_table(t: Traced) -> None:
    run = t.run
    tenant_id, _, _ = await new_tenant(run)
    before = await scrape(run)
    start = utcnow() - timedelta(hours=1)
    with run.services.db.session() as s:
        for status, minutes in (("succeeded", 4), ("succeeded", 20), ("failed", 1)):
            s.add(_job(tenant_id, status, started_at=start, finished_at=start + timedelta(minutes=minutes)))
    after = await scrape(run)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert added("tailor_job_duration_seconds_count", status="succeeded") == 2
    assert added("tailor_job_duration_seconds_sum", status="succeeded") == 24 * 60
    assert added("tailor_job_duration_seconds_bucket", status="succeeded", le="300.0") == 1
    assert added("tailor_job_duration_seconds_bucket", status="succeeded", le="1800.0") == 2
    assert added("tailor_job_duration_seconds_count", status="failed") == 1


async def test_adapter_loads_and_evictions(t: Traced) -> None:
    run = t.run
    pool = run.services.pool
    for engine in pool.engines:
        engine.resident.clear()
    tenant_id, name, auth = await new_tenant(run)
    register_adapter(run, tenant_id, "first")
    register_adapter(run, tenant_id, "second")
    before = await scrape(run)
    old_max = pool.max_resident
    pool.max_resident = 1
    try:
        for model in ("first", "second"):
            r = await run.http.post("/v1/chat/completions", json={**CHAT, "model": model}, headers=auth)
            assert r.status_code == 200, r.text
    finally:
        pool.max_resident = old_max
    after = await scrape(run)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("tailor_adapter_loads_total", engine=ENGINE, outcome="ok") == 2
    assert delta("tailor_adapter_load_duration_seconds_count", engine=ENGINE) == 2
    assert delta("tailor_adapter_evictions_total", engine=ENGINE) == 1
    assert (
        value(
            after,
            "tailor_requests_total",
            endpoint="chat.completions",
            status_class="2xx",
            tenant=name,
            model="first",
        )
        == 1
    )

    # Each load is a span inside the request that triggered it; the eviction an event there.
    spans = t.spans.get_finished_spans()
    loads = by_name(spans, "adapter load")
    assert len(loads) == 2
    for model, load in zip(("first", "second"), loads, strict=True):
        [server] = by_name(spans, f"chat {model}")
        assert load.parent is not None and load.parent.span_id == server.context.span_id
        assert load.attributes["tailor.engine"] == ENGINE
    [second] = by_name(spans, "chat second")
    assert [e.name for e in second.events] == ["adapter evicted"]


async def test_label_cardinality_is_bounded(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, metrics_tenant_labels=True) as run:
        keys = []
        for i in range(51):
            info = tenants.create_tenant(run.services.db, f"card{i}")
            keys.append((info.id, tenants.create_key(run.services.db, info.id).secret))
        for _, key in keys:
            r = await run.http.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        m = await scrape(run)
        counts = {dict(k)["tenant"]: v for k, v in m["tailor_requests_total"].items()}
        # A fresh registry: nothing from the module's other app.
        assert sum(counts.values()) == 51
        assert set(counts) == {f"card{i}" for i in range(50)} | {"other"}
        assert counts["other"] == 1
        assert value(m, "tailor_metrics_label_values", label="tenant") == 50

        # Models: the base model plus the first 50 names that resolved.
        metrics = run.services.telemetry.metrics
        for i in range(60):
            record = InteractionRecord(
                id=f"x{i}", tenant_id=keys[0][0], api_key_id=None, endpoint="completions", model=f"m{i}", request={}
            )
            metrics.request_started("completions")
            metrics.request_finished(record, model_known=True)
        m = await scrape(run)
        models = {dict(k)["model"] for k in m["tailor_requests_total"]}
        assert models == {BASE, "other"} | {f"m{i}" for i in range(50)}
        assert value(m, "tailor_requests_in_flight", endpoint="completions") == 0

        # Tracing is off unless configured: no provider, no traceparent for the engine.
        assert run.services.telemetry.tracing.provider is None
        seen: list[httpx.Request] = []

        async def capture(request: httpx.Request) -> None:
            seen.append(request)

        run.services.client.event_hooks = {"request": [capture], "response": []}
        r = await run.http.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {keys[0][1]}"})
        assert r.status_code == 200
        [sent] = seen
        assert "traceparent" not in sent.headers


async def test_by_default_metrics_show_no_tenant_and_no_adapter_name(tmp_path: Path) -> None:
    # /metrics is unauthenticated: unless the operator turns tenant labels on, it says nothing
    # about who the tenants are or what they call their adapters.
    async with running_gateway(tmp_path) as run:
        tenant_id, name, auth = await new_tenant(run)
        register_adapter(run, tenant_id, "secret-project")
        for model in (BASE, "secret-project", "made-up"):
            await run.http.post("/v1/chat/completions", json={**CHAT, "model": model}, headers=auth)
        text = await exposition(run)
        m = await scrape(run)
    for told in (tenant_id, name, "secret-project", "made-up"):
        assert told not in text
    assert {dict(k)["tenant"] for k in m["tailor_requests_total"]} == {"all"}
    assert {dict(k)["model"] for k in m["tailor_requests_total"]} == {BASE, "adapter", "other"}
    ok = dict(endpoint="chat.completions", status_class="2xx", tenant="all")
    assert value(m, "tailor_requests_total", **ok, model=BASE) == 1
    assert value(m, "tailor_requests_total", **ok, model="adapter") == 1
    assert (
        value(m, "tailor_requests_total", endpoint="chat.completions", status_class="4xx", tenant="all", model="other")
        == 1
    )


async def test_tenant_labels_are_names_and_never_ids(t: Traced) -> None:
    run = t.run
    tenant_id, name, auth = await new_tenant(run)
    assert (await run.http.post("/v1/chat/completions", json=CHAT, headers=auth)).status_code == 200
    # A series whose tenant cannot be named (gone from the database) is left out, not shown by id.
    ghost = new_id("tenant")
    metrics = run.services.telemetry.metrics
    metrics.request_started("completions")
    metrics.request_finished(
        InteractionRecord(id="x", tenant_id=ghost, api_key_id=None, endpoint="completions", model=BASE, request={}),
        model_known=True,
    )
    text = await exposition(run)
    assert tenant_id not in text and ghost not in text
    m = await scrape(run)
    assert (
        value(m, "tailor_requests_total", endpoint="chat.completions", status_class="2xx", tenant=name, model=BASE) == 1
    )
    assert value(m, "tailor_metrics_label_values", label="tenant") >= 2  # both still hold their slot


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
