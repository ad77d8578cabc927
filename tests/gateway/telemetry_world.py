"""The gateway telemetry tests' world (tests/gateway/test_telemetry.py, test_tracing.py): the
real app against gateway_world's fake vLLM (no engine), its spans collected with an
InMemorySpanExporter and the requests the engine received captured with an httpx request hook;
/metrics scraped and parsed."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from adapters import registry
from gateway.routes import metrics as metrics_route
from tests.gateway.gateway_world import ADMIN, BASE, Running, running_gateway, write_tiny_adapter

_serial = itertools.count()


@dataclass
class Traced:
    run: Running
    spans: InMemorySpanExporter
    upstream: list[httpx.Request]  # every request the gateway sent to the engine


def traced_fixtures() -> tuple[Any, Any]:
    """A module's fixtures `traced` (one gateway for the module, tenant labels on, its spans and
    engine requests captured) and `t` (the same, cleared for each test): assign both as
    `traced, t = traced_fixtures()`."""

    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def traced(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Traced]:
        # Tenant labels on, so the per-tenant series can be checked by tenant name.
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

    return traced, t


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
