"""A policy change and its audit event are one transaction: both are kept, or neither."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import audit
from core.db import Database
from core.models import AuditEvent
from tests.core.audit_faults import failing_after_recording
from trainer import policy


def events(db: Database, tenant: str) -> list[AuditEvent]:
    with db.session() as s:
        found = list(
            s.scalars(select(AuditEvent).where(AuditEvent.tenant_id == tenant, AuditEvent.action == "policy.update"))
        )
        s.expunge_all()
    return found


def test_a_change_writes_one_event_with_every_field_before_and_after(db: Database, tenant: str) -> None:
    policy.set_policy(db, tenant, {"auto_promote": True}, actor="admin", tenant_name="acme")
    [event] = events(db, tenant)
    assert (event.actor, event.target) == ("admin", "acme")
    assert event.before["auto_promote"] is False and event.after["auto_promote"] is True
    assert set(event.before) == set(event.after) == {
        "retrain", "retrain_min_feedback", "retrain_interval_hours", "auto_promote", "canary_fraction", "gates",
        "reward_grader", "merge_above_share", "merge_min_requests",
    }  # fmt: skip
    policy.set_policy(db, tenant, {"canary_fraction": 0.25})  # no actor: nothing recorded
    assert len(events(db, tenant)) == 1


def test_a_failure_keeps_neither_the_change_nor_its_event(
    db: Database, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with failing_after_recording(monkeypatch, audit) as written:
        policy.set_policy(db, tenant, {"auto_promote": True}, actor="admin", tenant_name="acme")
    assert written == ["policy.update"]
    assert events(db, tenant) == [] and policy.get_policy(db, tenant).auto_promote is False
