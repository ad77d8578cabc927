"""gateway.privacy's retention: what a tenant's retention period has expired (interactions,
their feedback, stored responses) is deleted, and nothing else, by a run or the periodic loop."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from core.db import Database
from core.ids import new_id
from core.models import AuditEvent, Feedback, Interaction, StoredResponse, Tenant
from gateway import privacy
from gateway.responses import store as response_store
from gateway.tenants import create_tenant
from tests.dbutil import add_interaction

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def _aged(db: Database, tenant_id: str, days: float, **fields: Any) -> str:
    return add_interaction(db, tenant_id, model="m", created_at=NOW - timedelta(days=days), **fields)


def stored_response(db: Database, tenant_id: str, days: float) -> str:
    """A stored Responses API answer of `tenant_id`, `days` before NOW."""
    rid = new_id("resp", "_")
    turn = response_store.Turn(rid, "m", NOW - timedelta(days=days), None, [], {"id": rid, "output": []})
    response_store.save(db, tenant_id, turn)
    return rid


def _feedback(db: Database, tenant_id: str, interaction_id: str | None, days: float) -> str:
    fid = new_id("fb")
    with db.session() as s:
        s.add(
            Feedback(
                id=fid,
                tenant_id=tenant_id,
                interaction_id=interaction_id,
                rating="good",
                source="api",
                created_at=NOW - timedelta(days=days),
            )
        )
    return fid


def _ids(db: Database, model: Any, tenant_id: str) -> set[str]:
    with db.session() as s:
        return set(s.scalars(select(model.id).where(model.tenant_id == tenant_id)))


def test_retention_deletes_what_expired_and_nothing_else(db: Database) -> None:
    short, forever = create_tenant(db, "short").id, create_tenant(db, "forever").id
    with db.session() as s:
        row = s.get(Tenant, short)
        assert row is not None
        row.retention_days = 7
    old, fresh = _aged(db, short, 8), _aged(db, short, 6)
    edge = _aged(db, short, 7)  # exactly at the cutoff: kept (older than the period goes)
    kept_forever = _aged(db, forever, 400)
    on_old = _feedback(db, short, old, 1)  # recent feedback about an expired interaction
    old_import = _feedback(db, short, None, 10)  # an old imported example
    on_fresh = _feedback(db, short, fresh, 1)
    forever_fb = _feedback(db, forever, kept_forever, 400)
    old_response, fresh_response, forever_response = (
        stored_response(db, short, 8),
        stored_response(db, short, 6),
        stored_response(db, forever, 400),
    )

    result = privacy.apply_retention(db, NOW, chunk=1)  # chunk 1: the loop over chunks runs too
    assert (result.interactions, result.feedback, result.responses) == (1, 2, 1)
    assert result.by_tenant == {short: {"interactions": 1, "feedback": 2, "responses": 1}}
    assert _ids(db, StoredResponse, short) == {fresh_response} and old_response not in _ids(db, StoredResponse, short)
    assert _ids(db, StoredResponse, forever) == {forever_response}
    assert _ids(db, Interaction, short) == {fresh, edge}
    assert _ids(db, Feedback, short) == {on_fresh}
    assert _ids(db, Interaction, forever) == {kept_forever} and _ids(db, Feedback, forever) == {forever_fb}
    assert on_old not in _ids(db, Feedback, short) and old_import not in _ids(db, Feedback, short)

    again = privacy.apply_retention(db, NOW)
    assert (again.interactions, again.feedback) == (0, 0)
    later = privacy.apply_retention(db, NOW + timedelta(days=2))
    assert later.interactions == 2 and _ids(db, Interaction, short) == set()

    with db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "tenant.retention")))
    assert [(e.actor, e.tenant_id, e.after["interactions"]) for e in events if e.after] == [
        ("system:retention", short, 1),
        ("system:retention", short, 2),
    ]


async def test_retention_loop_runs_until_cancelled(sqlite_db: Database) -> None:

    tenant = create_tenant(sqlite_db, "short").id
    with sqlite_db.session() as s:
        row = s.get(Tenant, tenant)
        assert row is not None
        row.retention_days = 1
    add_interaction(sqlite_db, tenant, model="m", created_at=datetime.now(timezone.utc) - timedelta(days=3))

    task = asyncio.create_task(privacy.retention_loop(sqlite_db, interval_s=0.01))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not _ids(sqlite_db, Interaction, tenant):
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _ids(sqlite_db, Interaction, tenant) == set()
