"""gateway.limits: per-tenant rate limits and quotas in the shared database, and their API.

Counters are checked on SQLite (two Database objects on one file stand for two gateway
replicas) and on a real PostgreSQL (many threads at once: the upsert is atomic, so exactly
the limit gets through). The HTTP tests run the real app with an engine nothing answers:
admission happens before the engine is asked, so a refused request never reaches it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from core.db import Database, migrate
from core.errors import TailorError
from core.ids import new_id
from core.models import AuditEvent, RateCounter, Tenant
from gateway import limits
from gateway.limits import TenantLimits, TokenMeter
from tests.apputil import ADMIN, TenantsApi, error, make_app, serve_tenants

NOW = datetime(2026, 12, 31, 23, 59, 30, tzinfo=timezone.utc)
CHAT_LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
CHAT = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def make_db(url: str) -> tuple[Database, str]:
    migrate(url)
    db = Database(url)
    tenant = new_id("ten")
    with db.session() as s:
        s.add(Tenant(id=tenant, name=tenant))
    return db, tenant


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[tuple[Database, str]]:
    db, tenant = make_db(f"sqlite:///{tmp_path / 'tailor.db'}")
    yield db, tenant
    db.dispose()


def refusal(db: Database, tenant: str, lim: TenantLimits, now: datetime = NOW) -> TailorError:
    with pytest.raises(TailorError) as e:
        limits.admit(db, tenant, lim, now)
    assert e.value.status == 429
    return e.value


# --- windows ---------------------------------------------------------------------------


def test_windows_end_at_the_next_minute_day_and_month() -> None:
    assert limits.window(limits.REQUESTS_MINUTE, NOW)[1] == datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert limits.window(limits.TOKENS_DAY, NOW)[1] == datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert limits.window(limits.TOKENS_MONTH, NOW)[1] == datetime(2027, 1, 1, tzinfo=timezone.utc)
    june = datetime(2026, 6, 15, 8, 0, 0, tzinfo=timezone.utc)
    assert limits.window(limits.TOKENS_MONTH, june)[1] == datetime(2026, 7, 1, tzinfo=timezone.utc)
    later = june + timedelta(seconds=59)
    assert limits.window(limits.TOKENS_MINUTE, june)[0] == limits.window(limits.TOKENS_MINUTE, later)[0]
    assert (
        limits.window(limits.TOKENS_MINUTE, later + timedelta(seconds=1))[0]
        == limits.window(limits.TOKENS_MINUTE, june)[0] + 1
    )


def test_limits_json_round_trip_and_empty_means_unlimited() -> None:
    assert TenantLimits.from_json(None) is None
    assert TenantLimits.from_json({"requests_per_minute": None}) is None
    lim = TenantLimits(requests_per_minute=5, tokens_per_day=10)
    assert TenantLimits.from_json(lim.to_json()) == lim
    assert lim.counts_tokens and not TenantLimits(requests_per_minute=1).counts_tokens


# --- admission ----------------------------------------------------------------------------


def test_requests_per_minute_with_retry_after(sqlite: tuple[Database, str]) -> None:
    db, tenant = sqlite
    lim = TenantLimits(requests_per_minute=2)
    limits.admit(db, tenant, lim, NOW)
    limits.admit(db, tenant, lim, NOW)
    e = refusal(db, tenant, lim)
    assert (e.code, e.type, e.headers) == ("rate_limit_exceeded", "rate_limit_error", {"Retry-After": "30"})
    assert "2 requests per minute" in e.message
    limits.admit(db, tenant, lim, NOW + timedelta(seconds=30))  # a new minute


def test_token_limits_and_quotas(sqlite: tuple[Database, str]) -> None:
    db, tenant = sqlite
    limits.charge(db, {tenant: 100}, NOW)
    limits.admit(db, tenant, TenantLimits(tokens_per_minute=101), NOW)
    e = refusal(db, tenant, TenantLimits(tokens_per_minute=100))
    assert e.code == "rate_limit_exceeded" and "100 tokens per minute" in e.message
    e = refusal(db, tenant, TenantLimits(tokens_per_minute=100, tokens_per_day=50))
    # the longest spent window is the answer: waiting a minute would not help
    assert (e.code, e.type, e.headers) == ("insufficient_quota", "insufficient_quota", {"Retry-After": "30"})
    e = refusal(db, tenant, TenantLimits(tokens_per_month=100), NOW.replace(day=2))
    assert "per month" in e.message and int((e.headers or {})["Retry-After"]) > 86400 * 29
    # next minute: the per-minute limit has room again, the daily quota counted on
    charge_later = NOW + timedelta(minutes=1)
    limits.admit(db, tenant, TenantLimits(tokens_per_minute=100), charge_later)
    assert limits.usage_now(db, tenant, NOW)["tokens_day"] == 100


def test_two_replicas_share_the_counters(sqlite: tuple[Database, str]) -> None:
    db, tenant = sqlite
    other = Database(db.url)  # a second gateway on the same database
    lim = TenantLimits(requests_per_minute=3)
    limits.admit(db, tenant, lim, NOW)
    limits.admit(other, tenant, lim, NOW)
    limits.admit(db, tenant, lim, NOW)
    refusal(other, tenant, lim)
    other.dispose()


def test_postgres_upsert_is_atomic_under_concurrency(postgres_url: str) -> None:
    db, tenant = make_db(postgres_url)
    lim = TenantLimits(requests_per_minute=10)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            limits.admit(db, tenant, lim, NOW)
            ok = True
        except TailorError:
            ok = False
        with lock:
            outcomes.append(ok)

    threads = [threading.Thread(target=one) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 10 and len(outcomes) == 30
    limits.charge(db, {tenant: 7}, NOW)
    # a refused request's increment rolls back with its transaction: it consumed nothing
    assert limits.usage_now(db, tenant, NOW) == {
        "requests_minute": 10,
        "tokens_minute": 7,
        "tokens_day": 7,
        "tokens_month": 7,
    }
    db.dispose()


def test_prune_keeps_recent_windows(sqlite: tuple[Database, str]) -> None:
    db, tenant = sqlite
    limits.charge(db, {tenant: 5}, NOW - timedelta(days=60))
    limits.charge(db, {tenant: 5}, NOW)
    removed = limits.prune(db, NOW)
    assert removed == 2  # the old minute and the old day; the old month is kept a year
    with db.session() as s:
        kinds = sorted(r.kind for r in s.scalars(select(RateCounter)))
    assert kinds == ["tokens_day", "tokens_minute", "tokens_month", "tokens_month"]


def test_token_meter_keeps_tokens_when_a_flush_fails(
    sqlite: tuple[Database, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, tenant = sqlite
    meter = TokenMeter(db)
    meter.add(tenant, 40)
    meter.add(tenant, 2)
    meter.add(tenant, 0)

    def down(*_a: object, **_k: object) -> None:
        raise RuntimeError("database is away")

    monkeypatch.setattr(limits, "charge", down)
    with pytest.raises(RuntimeError):
        meter.flush()
    monkeypatch.undo()
    meter.add(tenant, 8)
    meter.flush()
    assert limits.usage_now(db, tenant)["tokens_day"] == 50
    meter.flush()  # nothing pending: nothing written twice
    assert limits.usage_now(db, tenant)["tokens_day"] == 50


# --- the API ---------------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TenantsApi]:
    with serve_tenants(make_app(tmp_path), TenantsApi) as api:
        yield api


def test_admin_sets_limits_and_the_tenant_gets_429(api: TenantsApi) -> None:
    r = api.client.put("/admin/tenants/acme/limits", json={"requests_per_minute": 2}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["requests_per_minute"] == 2 and r.json()["tokens_per_day"] is None
    statuses = [api.client.post("/v1/chat/completions", json=CHAT, headers=api.keys["acme"]) for _ in range(3)]
    assert [s.status_code for s in statuses[:2]] != [429, 429]
    refused = statuses[2]
    body = error(refused, 429)
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # another tenant is not limited by acme's counters
    assert api.client.post("/v1/chat/completions", json=CHAT, headers=api.keys["beta"]).status_code != 429

    own = api.client.get("/v1/limits", headers=api.keys["acme"]).json()
    assert own["requests_per_minute"] == 2 and own["used"]["requests_minute"] == 2
    with api.db.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "tenant.limits")).one()
    assert (event.actor, event.target, event.before) == ("admin", "acme", None)
    assert event.after is not None and event.after["requests_per_minute"] == 2

    # lifting the limit applies at once on this replica
    assert api.client.put("/admin/tenants/acme/limits", json={}, headers=ADMIN).status_code == 200
    assert api.client.post("/v1/chat/completions", json=CHAT, headers=api.keys["acme"]).status_code != 429


def test_a_spent_quota_is_insufficient_quota(api: TenantsApi) -> None:
    api.client.put("/admin/tenants/acme/limits", json={"tokens_per_day": 10}, headers=ADMIN)
    limits.charge(api.db, {api.ids["acme"]: 10})
    body = error(api.client.post("/v1/chat/completions", json=CHAT, headers=api.keys["acme"]), 429)
    assert body["code"] == "insufficient_quota" and body["type"] == "insufficient_quota"


def test_limits_input_is_checked(api: TenantsApi) -> None:
    put = api.client.put
    error(put("/admin/tenants/acme/limits", json={"requests_per_minute": 0}, headers=ADMIN), 400)
    error(put("/admin/tenants/acme/limits", json={"requests_per_minute": "5"}, headers=ADMIN), 400)
    error(put("/admin/tenants/acme/limits", json={"rpm": 5}, headers=ADMIN), 400)
    error(put("/admin/tenants/nobody/limits", json={}, headers=ADMIN), 404)
    error(put("/admin/tenants/acme/limits", json={}, headers=api.keys["acme"]), 401)
    assert api.client.get("/admin/tenants/acme/limits", headers=ADMIN).json()["requests_per_minute"] is None


def test_storage_quotas_are_set_reported_and_enforced(api: TenantsApi) -> None:
    r = api.client.put("/admin/tenants/acme/limits", json={"max_files": 1, "max_queued_jobs": 5}, headers=ADMIN)
    assert r.status_code == 200, r.text
    own = api.client.get("/v1/limits", headers=api.keys["acme"]).json()
    assert (own["max_files"], own["max_stored_bytes"]) == (1, None)
    assert own["quotas"] == {
        "max_stored_bytes": 20_000_000_000,  # the operator's default
        "max_adapter_versions": 500,
        "max_files": 1,
        "max_queued_jobs": 5,
    }
    assert own["used"]["files"] == 0 and own["used"]["stored_bytes"] == 0 and own["used"]["queued_jobs"] == 0
    assert upload_as(api, "acme").status_code == 200
    body = error(upload_as(api, "acme"), 429)
    assert (body["type"], body["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "quota of 1 files (max_files): 1 used" in body["message"]
    used = api.client.get("/v1/limits", headers=api.keys["acme"]).json()["used"]
    assert (used["files"], used["stored_bytes"]) == (1, len(CHAT_LINE))
    # Another tenant keeps the operator's defaults.
    assert upload_as(api, "beta").status_code == 200


def upload_as(api: TenantsApi, tenant: str) -> httpx.Response:
    return api.client.post(
        "/v1/files",
        files={"file": ("x.jsonl", CHAT_LINE, "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=api.keys[tenant],
    )


def test_storage_quotas_alone_count_no_requests(sqlite: tuple[Database, str]) -> None:
    db, tenant = sqlite
    quota_only = TenantLimits.from_json({"max_files": 3})
    assert quota_only is not None and not quota_only.rate_limited
    limits.admit(db, tenant, quota_only, NOW)
    with db.session() as s:
        assert s.scalars(select(RateCounter)).all() == []
