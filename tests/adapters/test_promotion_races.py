"""Concurrent promotions, canaries and rollbacks of one adapter, on SQLite and PostgreSQL.

Each action runs in its own thread and database session, all released at once by a
barrier, so without the adapter row lock they read the same state and overwrite each
other's decisions (two versions `active`, two rollbacks to the same version).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters import promotion, registry
from adapters.registry import ValidationLimits
from adapters.store import AdapterStore
from adapters.validation import BaseModelSpec
from core.db import Database
from core.errors import TailorError
from core.models import Adapter, AdapterVersion
from tests.adapters.test_promotion import add, make_env
from tests.adapters.test_validation import write_adapter

NAME = "support"
CANDIDATES = (2, 3, 4, 5)


@pytest.fixture
def race(db: Database, tmp_path: Path):
    """`support` v1 active and v2..v5 candidates of tenant acme; yields (db, acme id)."""
    env = make_env(db, tmp_path)
    add(env, NAME, 4)
    for r in range(5, 9):
        add(env, NAME, r, activate=False)
    return db, env[3]


def _run_at_once(actions: list[Callable[[], object]]) -> list[BaseException | None]:
    """Run every action in its own thread, released together; the error each raised, if any."""
    start = threading.Barrier(len(actions))

    def run(action: Callable[[], object]) -> BaseException | None:
        start.wait()
        try:
            action()
        except TailorError as exc:
            return exc
        return None

    with ThreadPoolExecutor(len(actions)) as pool:
        return list(pool.map(run, actions))


def _states(db: Database, tenant_id: str) -> tuple[Adapter, dict[int, AdapterVersion]]:
    with db.session() as s:
        adapter = s.scalar(select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == NAME))
        assert adapter is not None
        return adapter, {v.version: v for v in adapter.versions}


def _assert_consistent(db: Database, tenant_id: str) -> None:
    adapter, versions = _states(db, tenant_id)
    active = [v for v in versions.values() if v.state == "active"]
    assert len(active) == 1, {n: v.state for n, v in versions.items()}
    assert adapter.active_version_id == active[0].id
    canaries = [v for v in versions.values() if v.state == "canary"]
    if adapter.canary_version_id is None:
        assert canaries == [] and adapter.canary_fraction == 0.0
    else:
        assert [v.id for v in canaries] == [adapter.canary_version_id]
        assert adapter.canary_version_id != adapter.active_version_id


def test_concurrent_promotions_canaries_and_rollbacks_leave_one_active_version(race) -> None:
    db, acme = race
    promotion.promote(db, acme, NAME, 2, actor="setup")  # something to roll back to
    draw = random.Random(13)
    actions: list[Callable[[], object]] = []
    for i in range(20):
        version = draw.choice(CANDIDATES)
        actions.append(
            [
                lambda v=version: promotion.promote(db, acme, NAME, v, actor="race"),
                lambda v=version: promotion.start_canary(db, acme, NAME, v, 0.2, actor="race"),
                lambda: promotion.rollback(db, acme, NAME, actor="race"),
                lambda: promotion.stop_canary(db, acme, NAME, actor="test"),
            ][i % 4]
        )
    errors = _run_at_once(actions)
    # Refusals are fine (canary of the version now serving, nothing left to roll back to);
    # each is a clear 400, never a database error.
    assert all(e is None or (isinstance(e, TailorError) and e.status == 400) for e in errors), errors
    _assert_consistent(db, acme)


def test_concurrent_rollbacks_each_go_one_step_further_back(race) -> None:
    db, acme = race
    for version in CANDIDATES:
        promotion.promote(db, acme, NAME, version, actor="setup")  # history v1 -> v2 -> ... -> v5
    errors = _run_at_once([lambda: promotion.rollback(db, acme, NAME, actor="race") for _ in range(5)])
    # Four steps back reach v1; the fifth finds nothing earlier.
    assert [getattr(e, "code", None) for e in errors if e is not None] == ["no_previous_version"]
    _adapter, versions = _states(db, acme)
    assert {n: v.state for n, v in versions.items()} == {
        1: "active",
        2: "rolled_back",
        3: "rolled_back",
        4: "rolled_back",
        5: "rolled_back",
    }
    _assert_consistent(db, acme)


def test_concurrent_canaries_leave_one_canary(race) -> None:
    db, acme = race
    errors = _run_at_once(
        [lambda v=v: promotion.start_canary(db, acme, NAME, v, 0.1, actor="race") for v in CANDIDATES * 5]
    )
    assert errors == [None] * 20
    _assert_consistent(db, acme)
    adapter, versions = _states(db, acme)
    assert adapter.canary_version_id is not None
    assert sorted(v.state for v in versions.values()) == ["active", "canary", "candidate", "candidate", "candidate"]


def test_activating_registrations_take_turns_with_promotions(race, tmp_path: Path) -> None:
    db, acme = race
    store = AdapterStore(str(tmp_path / "store"), tmp_path / "cache")
    limits = ValidationLimits(
        base=BaseModelSpec.from_config_dir(tmp_path / "tiny-llama"), max_rank=16, max_bytes=10_000_000
    )
    uploads = [write_adapter(tmp_path / f"upload-{r}", r=r) for r in range(1, 11)]
    errors = _run_at_once(
        [
            lambda src=src: registry.register_dir(
                db, store, limits, tenant_id=acme, name=NAME, source_dir=src, base_model_name="base-model", actor="test"
            )
            for src in uploads
        ]
        + [lambda v=v: promotion.promote(db, acme, NAME, v, actor="race") for v in CANDIDATES * 2]
        + [lambda: promotion.start_canary(db, acme, NAME, 3, 0.1, actor="race")] * 2
    )
    assert all(e is None or e.status == 400 for e in errors), errors
    _assert_consistent(db, acme)
