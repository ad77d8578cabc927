"""Gateway telemetry: /metrics (request, token, job, engine and adapter series, bounded labels).

Runs the real app against gateway_world's fake vLLM (no engine), through tests/gateway/
telemetry_world.py: requests go through the proxy and /metrics is scraped and parsed.
OpenTelemetry spans and JSON log lines: test_tracing.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from core.ids import new_id, utcnow
from core.models import Interaction, Job
from gateway import tenants
from gateway.interaction_log import InteractionRecord
from tests.gateway.gateway_world import BASE, CHAT, COMPLETION, ENGINE, running_gateway
from tests.gateway.telemetry_world import (
    Traced,
    by_name,
    exposition,
    new_tenant,
    register_adapter,
    scrape,
    traced_fixtures,
    value,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

traced, t = traced_fixtures()


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
