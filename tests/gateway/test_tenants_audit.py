"""Each tenant, key and limits change in gateway.tenants writes its own audit event.

One event per change, naming the actor, written in the change's own transaction: a failure
while it commits leaves neither the change nor the event; without an actor, none is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from core.db import Database
from core.models import ApiKey, AuditEvent, Tenant
from gateway import audit, tenants
from gateway.limits import TenantLimits
from tests.core.audit_faults import failing_after_recording

ACTOR = "key:key-tester"


def _events(db: Database) -> list[tuple[str, str, str | None, str | None]]:
    with db.session() as s:
        return [
            (e.action, e.actor, e.tenant_id, e.target) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]


def _state(db: Database) -> object:
    """Every tenant and key as stored: what any of the changes may touch."""
    with db.session() as s:
        return (
            sorted((t.id, t.name, repr(t.limits)) for t in s.scalars(select(Tenant))),
            sorted((k.id, k.tenant_id, repr(k.expires_at), repr(k.revoked_at)) for k in s.scalars(select(ApiKey))),
        )


@dataclass(frozen=True)
class World:
    db: Database
    key_id: str  # acme's one key


Change = Callable[[World, str | None], Any]  # the change, by an actor (None: unaudited)
Target = Callable[[World, Any], str]  # the event's target, from the world and what the change returned

CHANGES: list[tuple[str, Change, Target]] = [
    ("tenant.create", lambda w, actor: tenants.create_tenant(w.db, "gamma", actor=actor), lambda w, new: "gamma"),
    ("tenant.delete", lambda w, actor: tenants.delete_tenant(w.db, "acme", actor=actor), lambda w, old: "acme"),
    (
        "key.create",
        lambda w, actor: tenants.create_key(w.db, "acme", name="ci", actor=actor),
        lambda w, new: new.info.id,
    ),
    ("key.revoke", lambda w, actor: tenants.revoke_key(w.db, w.key_id, actor=actor), lambda w, _: w.key_id),
    (
        "key.rotate",
        lambda w, actor: tenants.rotate_key(w.db, w.key_id, grace_seconds=60, actor=actor),
        lambda w, _: w.key_id,
    ),
    (
        "tenant.limits",
        lambda w, actor: tenants.set_limits(w.db, "acme", TenantLimits(requests_per_minute=5), actor=actor),
        lambda w, _: "acme",
    ),
]
IDS = [c[0] for c in CHANGES]


@pytest.fixture
def world(sqlite_db: Database) -> World:
    tenants.create_tenant(sqlite_db, "acme")
    return World(sqlite_db, tenants.create_key(sqlite_db, "acme").info.id)


@pytest.mark.parametrize(("action", "change", "target"), CHANGES, ids=IDS)
def test_each_change_writes_one_event_by_its_actor(world: World, action: str, change: Change, target: Target) -> None:
    assert _events(world.db) == []
    result = change(world, ACTOR)
    [(got_action, actor, tenant_id, got_target)] = _events(world.db)
    assert (got_action, actor, got_target) == (action, ACTOR, target(world, result))
    assert tenant_id is not None and tenant_id.startswith("ten")


@pytest.mark.parametrize(("action", "change", "target"), CHANGES, ids=IDS)
def test_without_an_actor_nothing_is_recorded(world: World, action: str, change: Change, target: Target) -> None:
    before = _state(world.db)
    change(world, None)
    assert _state(world.db) != before
    assert _events(world.db) == []


@pytest.mark.parametrize(("action", "change", "target"), CHANGES, ids=IDS)
def test_a_failure_in_the_transaction_keeps_neither_change_nor_event(
    world: World, monkeypatch: pytest.MonkeyPatch, action: str, change: Change, target: Target
) -> None:
    before = _state(world.db)
    with failing_after_recording(monkeypatch, audit) as written:
        change(world, ACTOR)
    assert written == [action]
    assert _events(world.db) == []
    assert _state(world.db) == before
