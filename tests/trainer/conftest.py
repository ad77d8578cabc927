"""Fixtures of the trainer's tests: a tenant in the test's database, and the retraining-policy
world (tests.trainer.policy_world)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.registry import ValidationLimits
from adapters.store import AdapterStore
from adapters.validation import BaseModelSpec
from core.db import Database
from gateway.tenants import create_tenant
from tests.adapters.test_validation import tiny_config, write_adapter
from tests.dbutil import migrated, sqlite_url
from tests.trainer.job_world import add_tenant
from tests.trainer.policy_world import Env


@pytest.fixture
def tenant(db: Database) -> str:
    """A tenant "acme" in `db`: the root fixture (SQLite and PostgreSQL), or a module's own."""
    return add_tenant(db, "acme")


@pytest.fixture(scope="module")
def adapter_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_adapter(tmp_path_factory.mktemp("adapter") / "lora")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A migrated database with tenants acme and beta, copied for each test (fast)."""
    path = tmp_path_factory.mktemp("template") / "t.db"
    db = migrated(sqlite_url(path.parent))
    acme, beta = create_tenant(db, "acme").id, create_tenant(db, "beta").id
    db.dispose()  # the last connection checkpoints the WAL into the file
    assert not path.with_name("t.db-wal").exists()
    return path, acme, beta


@pytest.fixture
def env(tmp_path: Path, adapter_src: Path, template: tuple[Path, str, str]) -> Iterator[Env]:
    base_dir = tmp_path / "tiny-llama"
    base_dir.mkdir()
    (base_dir / "config.json").write_text(json.dumps(tiny_config()))
    path, acme, beta = template
    shutil.copyfile(path, tmp_path / "t.db")
    url = f"sqlite:///{tmp_path}/t.db"
    db = Database(url)
    limits = ValidationLimits(base=BaseModelSpec.from_config_dir(base_dir), max_rank=16, max_bytes=10_000_000)
    store = AdapterStore(str(tmp_path / "store"), tmp_path / "cache")
    yield Env(tmp_path, url, db, store, limits, base_dir, acme, beta, adapter_src)
    db.dispose()
