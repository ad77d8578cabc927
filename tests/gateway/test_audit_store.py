"""The audit log's table (gateway/audit.py): append-only in the database itself (triggers of
migration 0004) and read the same way on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from core.db import Database
from core.errors import TailorError
from core.models import AuditEvent
from gateway import audit
from tests.gateway.test_audit import T0


def test_query_walks_everything_in_batches(sqlite_db: Database) -> None:
    for i in range(7):
        audit.record(sqlite_db, actor="admin", action="tenant.create", target=f"t{i}")
    every = list(audit.iter_events(sqlite_db, audit.Filter(), batch=2))
    assert [e.target for e in every] == [f"t{i}" for i in reversed(range(7))]
    bounded = audit.Filter(older_than=every[1].id, newer_than=every[5].id)
    assert [e.target for e in audit.iter_events(sqlite_db, bounded, batch=2)] == ["t4", "t3", "t2"]
    for limit in (0, audit.MAX_LIMIT + 1):
        with pytest.raises(TailorError) as refused:
            audit.query(sqlite_db, audit.Filter(), limit=limit)
        assert (refused.value.status, refused.value.param) == (400, "limit")


# --- append-only in the database ------------------------------------------------------


def test_events_cannot_be_changed_or_deleted(db: Database) -> None:
    """On SQLite and PostgreSQL (the `db` fixture runs both): triggers refuse UPDATE and DELETE."""
    audit.record(db, actor="admin", action="tenant.create", tenant_id="ten-1", target="acme", after={"a": 1})
    with db.session() as s:
        audit.record(s, actor="admin", action="tenant.delete", tenant_id="ten-1", target="acme")
    ids = [e.id for e in audit.query(db, audit.Filter(tenant_id="ten-1")).events]
    assert len(ids) == 2

    attempts = [
        lambda s: s.execute(update(AuditEvent).values(actor="mallory")),
        lambda s: s.execute(delete(AuditEvent).where(AuditEvent.id == ids[0])),
        lambda s: s.execute(text("DELETE FROM audit_events")),
        lambda s: setattr(s.get(AuditEvent, ids[0]), "after", {"a": 2}),
        lambda s: s.delete(s.get(AuditEvent, ids[1])),
    ]
    for attempt in attempts:
        with pytest.raises(DBAPIError, match="append-only"), db.session() as s:
            attempt(s)
            s.flush()
    with db.session() as s:
        rows = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    assert [(r.actor, r.action, r.after) for r in rows] == [
        ("admin", "tenant.create", {"a": 1}),
        ("admin", "tenant.delete", None),
    ]


def test_query_on_each_backend(db: Database) -> None:
    """Time filters compare in UTC whatever the backend returns (PostgreSQL: the session's zone)."""
    with db.session() as s:
        for i in range(3):
            s.add(AuditEvent(at=T0 + timedelta(hours=i), actor="admin", action="fine_tuning.x", target=f"t{i}"))
        s.add(AuditEvent(at=T0, actor="admin", action="fineXtuning.x", target="wild"))
    if db.engine.dialect.name == "postgresql":
        with db.session() as s:
            s.execute(text("SET TIME ZONE 'America/New_York'"))
    page = audit.query(db, audit.Filter(action="fine_tuning.", since=T0 + timedelta(hours=1)))
    assert [e.target for e in page.events] == ["t2", "t1"]
    assert page.events[0].at == T0 + timedelta(hours=2) and page.events[0].at.tzinfo == timezone.utc
    local = T0.astimezone(timezone(timedelta(hours=-8)))
    assert [e.target for e in audit.query(db, audit.Filter(until=local + timedelta(hours=1))).events] == [
        "wild",
        "t0",
    ]
