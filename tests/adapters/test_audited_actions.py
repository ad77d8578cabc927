"""Each adapter action (registry, promotion, version deletion) writes its own audit event.

Exactly one event per action, naming the actor, with the name's state before and after;
written in the action's own transaction, so a failure while it commits leaves neither the
change nor the event. And an activating registration switches the name the way a
promotion does: a running canary ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from adapters import promotion, registry, version_deletion
from adapters.registry import VersionInfo
from core import audit
from core.db import Database
from core.errors import TailorError
from core.models import AuditEvent
from tests.adapters.test_promotion import BASE, make_env, register
from tests.adapters.test_validation import write_adapter
from tests.core.audit_faults import failing_after_recording
from tests.dbutil import migrated, sqlite_url

ACTOR = "key:key-tester"
NAME = "support"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Any]:
    db = migrated(sqlite_url(tmp_path))
    yield make_env(db, tmp_path)
    db.dispose()


def _events(db: Database) -> list[AuditEvent]:
    with db.session() as s:
        rows = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        s.expunge_all()
        return rows


def _register(env: Any, r: int, *, activate: bool = True, actor: str = "setup") -> VersionInfo:
    tmp = env[5]
    src = write_adapter(tmp / f"src-{r}-{activate}", r=r)
    return register(env, NAME, src, actor=actor, source="path", activate=activate)


def _three_versions(env: Any) -> None:
    """v1 served before v2 (so there is something to roll back to), v3 a candidate."""
    db, acme = env[0], env[3]
    _register(env, 4)
    _register(env, 8)
    _register(env, 16, activate=False)
    assert registry.get_adapter(db, acme, NAME).active_version == 2


def _canary(env: Any) -> None:
    _three_versions(env)
    promotion.start_canary(env[0], env[3], NAME, 3, 0.2, actor="setup")


# (action, setup, the call, what `after` holds beyond the name's state)
ACTIONS: list[tuple[str, Callable[[Any], None], Callable[[Any], object], set[str]]] = [
    ("adapter.register", _three_versions, lambda e: _register(e, 12, actor=ACTOR), {"version"}),
    ("adapter.promote", _three_versions, lambda e: promotion.promote(e[0], e[3], NAME, 3, actor=ACTOR), set()),
    ("adapter.rollback", _three_versions, lambda e: promotion.rollback(e[0], e[3], NAME, actor=ACTOR), set()),
    (
        "adapter.canary.start",
        _three_versions,
        lambda e: promotion.start_canary(e[0], e[3], NAME, 3, 0.25, actor=ACTOR),
        set(),
    ),
    ("adapter.canary.stop", _canary, lambda e: promotion.stop_canary(e[0], e[3], NAME, actor=ACTOR), set()),
    (
        "adapter.reject",
        _three_versions,
        lambda e: promotion.reject(e[0], e[3], NAME, 3, reason="worse", actor=ACTOR),
        {"version", "reason"},
    ),
    (
        "adapter.version.delete",
        _three_versions,
        lambda e: version_deletion.delete_version(e[0], e[1], e[3], f"{NAME}@v3", bases=[BASE], actor=ACTOR),
        {"version"},
    ),
    (
        "adapter.delete",
        _three_versions,
        lambda e: version_deletion.delete_adapter(e[0], e[1], e[3], NAME, actor=ACTOR),
        set(),
    ),
]
IDS = [a[0] for a in ACTIONS]


def _state(env: Any) -> object:
    """Everything an action may change about the name, as the registry shows it."""
    db, acme = env[0], env[3]
    try:
        info = registry.get_adapter(db, acme, NAME)
    except TailorError:
        return None
    return (
        info.active_version,
        info.canary_version,
        info.canary_fraction,
        [(v.version, v.state) for v in info.versions],
    )


@pytest.mark.parametrize(("action", "setup", "call", "extra"), ACTIONS, ids=IDS)
def test_each_action_writes_one_event_with_actor_and_states(
    env: Any, action: str, setup: Callable[[Any], None], call: Callable[[Any], object], extra: set[str]
) -> None:
    db, acme = env[0], env[3]
    setup(env)
    seen = len(_events(db))
    before = _state(env)
    call(env)
    fresh = _events(db)[seen:]
    assert [(e.action, e.actor, e.tenant_id, e.target) for e in fresh] == [(action, ACTOR, acme, NAME)]
    event = fresh[0]
    assert event.before is not None and event.before["versions"] == [v for v, _state in before[3]]  # type: ignore[index]
    assert (event.before["active_version"], event.before["canary_version"]) == before[:2]  # type: ignore[index]
    after = _state(env)
    if after is None:  # the whole name is gone
        assert event.after is None
    else:
        assert event.after is not None
        assert set(event.after) == {"active_version", "canary_version", "canary_fraction", "versions"} | extra
        assert event.after["versions"] == [v for v, _state in after[3]]  # type: ignore[index]
        assert (event.after["active_version"], event.after["canary_version"]) == after[:2]  # type: ignore[index]


@pytest.mark.parametrize(("action", "setup", "call", "extra"), ACTIONS, ids=IDS)
def test_a_failure_in_the_transaction_keeps_neither_change_nor_event(
    env: Any,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    setup: Callable[[Any], None],
    call: Callable[[Any], object],
    extra: set[str],
) -> None:
    db = env[0]
    setup(env)
    seen, before = len(_events(db)), _state(env)
    with failing_after_recording(monkeypatch, audit) as written:
        call(env)
    assert written == [action]
    assert len(_events(db)) == seen
    assert _state(env) == before


def test_activating_registration_ends_a_running_canary_like_promote(env: Any) -> None:
    db, acme = env[0], env[3]
    _canary(env)  # v2 serves, v3 takes 20%
    v4 = _register(env, 12, actor=ACTOR)
    info = registry.get_adapter(db, acme, NAME)
    assert (info.active_version, info.canary_version, info.canary_fraction) == (v4.version, None, 0.0)
    assert {v.version: v.state for v in info.versions} == {1: "retired", 2: "retired", 3: "candidate", 4: "active"}
    assert registry.route(db, acme, NAME, BASE).canary is None
    event = _events(db)[-1]
    assert event.before is not None and event.before["canary_version"] == 3
    assert event.after is not None and event.after["canary_version"] is None

    # Promoting over a canary ends it the same way.
    promotion.start_canary(db, acme, NAME, 3, 0.2, actor="setup")
    promoted = promotion.promote(db, acme, NAME, 2, actor=ACTOR)
    assert (promoted.active_version, promoted.canary_version, promoted.canary_fraction) == (2, None, 0.0)
    assert {v.version: v.state for v in promoted.versions} == {1: "retired", 2: "active", 3: "candidate", 4: "retired"}


def test_registering_without_activation_leaves_the_canary(env: Any) -> None:
    db, acme = env[0], env[3]
    _canary(env)
    _register(env, 12, activate=False, actor=ACTOR)
    info = registry.get_adapter(db, acme, NAME)
    assert (info.active_version, info.canary_version, info.canary_fraction) == (2, 3, 0.2)
