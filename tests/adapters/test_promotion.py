"""Registry resolution, promotion, canaries and rollback on a real SQLite database."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapters import promotion, registry
from adapters.registry import Lineage, ValidationLimits
from adapters.store import AdapterStore
from adapters.validation import BaseModelSpec
from core.db import Database
from core.errors import TailorError
from core.states import VersionState
from gateway import tenants
from tests.adapters.test_validation import tiny_config, write_adapter
from tests.dbutil import migrated, sqlite_url

BASE = "base-model"


def make_env(db: Database, tmp_path: Path):
    """(db, store, limits, acme id, other id, tmp_path) around a migrated `db`."""
    model_dir = tmp_path / "tiny-llama"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(tiny_config()))
    limits = ValidationLimits(base=BaseModelSpec.from_config_dir(model_dir), max_rank=16, max_bytes=10_000_000)
    store = AdapterStore(str(tmp_path / "store"), tmp_path / "cache")
    acme = tenants.create_tenant(db, "acme")
    other = tenants.create_tenant(db, "other")
    return db, store, limits, acme.id, other.id, tmp_path


@pytest.fixture
def env(tmp_path: Path):
    db = migrated(sqlite_url(tmp_path))
    yield make_env(db, tmp_path)
    db.dispose()


def register(
    env, name: str, src: Path, *, tenant: str | None = None, limits: ValidationLimits | None = None, **options: Any
) -> registry.VersionInfo:
    """registry.register_dir of `src` as the next version of `name`: acme's, by actor "test",
    under the env's limits, unless told otherwise (`options` are register_dir's own)."""
    db, store, env_limits, acme, _other, _tmp = env
    options.setdefault("actor", "test")
    return registry.register_dir(
        db,
        store,
        limits or env_limits,
        tenant_id=tenant or acme,
        name=name,
        source_dir=src,
        base_model_name=BASE,
        **options,
    )


def add(env, name: str, r: int, *, activate: bool = True, tenant: str | None = None) -> registry.VersionInfo:
    tmp = env[-1]
    src = write_adapter(tmp / f"src-{name}-{r}-{activate}", r=r)
    if activate:
        return register(env, name, src, tenant=tenant)
    # As the worker registers a trained version: a candidate, not served until promoted.
    lineage = Lineage(job_id="ftjob-1", dataset_id="ds-1", metrics={"exact_match": 0.9})
    return register(
        env,
        name,
        src,
        tenant=tenant,
        source="training",
        activate=False,
        state=VersionState.CANDIDATE,
        lineage=lineage,
    )


def test_names_resolve_per_tenant(env) -> None:
    db, _store, _limits, acme, other, _tmp = env
    mine = add(env, "support", 4)
    theirs = add(env, "support", 8, tenant=other)
    assert registry.resolve(db, acme, "support", BASE).version_id == mine.id
    assert registry.resolve(db, other, "support", BASE).version_id == theirs.id
    assert registry.resolve(db, acme, BASE, BASE).is_base
    with pytest.raises(TailorError) as info:
        registry.resolve(db, acme, "nope", BASE)
    assert info.value.status == 404 and info.value.code == "model_not_found"


def test_candidate_is_pinned_only_until_promoted(env) -> None:
    db, _store, _limits, acme, _other, _tmp = env
    v1 = add(env, "support", 4)
    v2 = add(env, "support", 8, activate=False)
    assert v2.state == "candidate" and v2.version == 2
    assert registry.resolve(db, acme, "support", BASE).version_id == v1.id
    assert registry.resolve(db, acme, "support@v2", BASE).version_id == v2.id
    with pytest.raises(TailorError):
        registry.resolve(db, acme, "support@v9", BASE)
    info = promotion.promote(db, acme, "support", 2, actor="test")
    assert info.active_version == 2
    assert registry.resolve(db, acme, "support", BASE).version_id == v2.id
    states = {v.version: v.state for v in registry.get_adapter(db, acme, "support").versions}
    assert states == {1: "retired", 2: "active"}
    lineage = {row.version: row for row in promotion.lineage(db, acme, "support")}
    assert lineage[2].job_id == "ftjob-1" and lineage[2].dataset_id == "ds-1"
    assert lineage[2].promoted_by == "test" and lineage[2].serving == "active"


def test_rollback_returns_to_previous_version(env) -> None:
    db, _store, _limits, acme, _other, _tmp = env
    add(env, "support", 4)
    add(env, "support", 8, activate=False)
    promotion.promote(db, acme, "support", 2, actor="test")
    assert promotion.rollback(db, acme, "support", actor="test").active_version == 1
    with pytest.raises(TailorError) as info:
        promotion.rollback(db, acme, "support", actor="test")
    assert info.value.status == 400


def test_canary_splits_traffic(env) -> None:
    db, _store, _limits, acme, _other, _tmp = env
    v1 = add(env, "support", 4)
    v2 = add(env, "support", 8, activate=False)
    promotion.start_canary(db, acme, "support", 2, 0.25, actor="test")
    route = registry.route(db, acme, "support", BASE)
    picks = Counter(route.choose(i / 100).version_id for i in range(100))
    assert picks == {v2.id: 25, v1.id: 75}
    assert promotion.stop_canary(db, acme, "support", actor="test").canary_version is None
    assert registry.route(db, acme, "support", BASE).canary is None
    with pytest.raises(TailorError):
        promotion.start_canary(db, acme, "support", 2, 1.5, actor="test")
    with pytest.raises(TailorError):
        promotion.start_canary(db, acme, "support", 1, 0.5, actor="test")  # already serving


def test_rejected_candidate_cannot_be_the_serving_version(env) -> None:
    db, _store, _limits, acme, _other, _tmp = env
    add(env, "support", 4)
    add(env, "support", 8, activate=False)
    promotion.reject(db, acme, "support", 2, reason="worse on exact_match", actor="test")
    with pytest.raises(TailorError) as info:
        promotion.reject(db, acme, "support", 1, reason="x", actor="test")
    assert info.value.status == 409


def test_registration_refuses_bad_names(env) -> None:
    db, store, limits, acme, _other, tmp = env
    src = write_adapter(tmp / "src-bad", r=4)
    for bad in ("Support", "a/b", BASE):
        with pytest.raises(TailorError) as info:
            register(env, bad, src)
        assert info.value.status == 400
