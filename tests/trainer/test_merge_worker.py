"""A worker claims a merge like any job: the adapter version merged into the tiny base becomes
the name's next version, a whole model with the adapter as its parent, served only if asked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters import promotion, registry
from adapters.registry import ValidationLimits
from adapters.store import AdapterStore
from core.blobs import BlobStore
from core.config import Settings
from core.db import Database, migrate
from core.states import JobStatus, VersionKind, VersionState
from tests.trainer.compute.conftest import CORPUS
from tests.trainer.compute.test_merge import save_tiny_lora
from tests.trainer.job_world import add_tenant
from tests.trainer.tiny_models import save_tiny_llama, tiny_tokenizer
from trainer import merge
from trainer.worker import Worker


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer(CORPUS))
    return base, save_tiny_lora(base, tmp_path_factory.mktemp("lora") / "lora")


@dataclass
class World:
    db: Database
    worker: Worker
    tenant: str

    def merge(self, **kw: object) -> merge.MergeInfo:
        args: dict[str, object] = {"version": None, "activate": False, "actor": "key:k1", "base_model": "tiny"}
        return merge.request_merge(self.db, self.tenant, "support", **(args | kw))  # type: ignore[arg-type]

    def run(self, merge_id: str) -> merge.MergeInfo:
        assert self.worker.run_once(merge_id)
        return merge.get_merge(self.db, self.tenant, "support", merge_id)


@pytest.fixture
def world(tmp_path: Path, tiny_base: tuple[Path, Path]) -> World:
    base, lora = tiny_base
    settings = Settings(data_dir=tmp_path, engine_urls=["http://127.0.0.1:9"], base_model_path=base)
    migrate(settings.database_url or "")
    db = Database(settings.database_url or "")
    store = AdapterStore(settings.adapter_store_url or "", settings.cache_dir / "adapters")
    worker = Worker(settings, db, store, BlobStore(settings.blob_store_url or ""), worker_id="w-merge")
    tenant = add_tenant(db, "acme")
    registry.register_dir(
        db,
        store,
        ValidationLimits.from_settings(settings),
        tenant_id=tenant,
        name="support",
        source_dir=lora,
        base_model_name=settings.base_model_name,
        actor="test",
    )
    return World(db, worker, tenant)


def test_a_merge_registers_a_model_version_with_lineage_and_leaves_the_adapter_serving(world: World) -> None:
    done = world.run(world.merge().id)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert (done.model, done.version) == ("support@v2", 2)
    assert done.metrics is not None and done.metrics["merge_max_abs_logit_diff"] < 1e-4
    assert done.metrics["merge_next_token_agreement"] == 1.0

    by_number = {v.version: v for v in promotion.lineage(world.db, world.tenant, "support")}
    merged = by_number[2]
    assert merged.kind == VersionKind.MODEL and merged.source == "merge"
    assert merged.parent_version_id == by_number[1].id and merged.job_id == done.id
    assert merged.metrics == done.metrics and merged.state == VersionState.REGISTERED
    assert promotion.active_version(world.db, world.tenant, "support").version == 1  # type: ignore[union-attr]

    # Served by name once promoted, like any version; and back to the adapter by a rollback.
    promotion.promote(world.db, world.tenant, "support", 2, actor="key:k1")
    promotion.rollback(world.db, world.tenant, "support", actor="key:k1")
    assert promotion.active_version(world.db, world.tenant, "support").version == 1  # type: ignore[union-attr]


def test_a_merge_asked_to_activate_serves_its_result(world: World) -> None:
    done = world.run(world.merge(activate=True).id)
    assert done.status == JobStatus.SUCCEEDED, done.error
    active = promotion.active_version(world.db, world.tenant, "support")
    assert active is not None and active.version == 2 and active.kind == VersionKind.MODEL
    lineage = promotion.lineage(world.db, world.tenant, "support")
    assert lineage[-1].promoted_by == f"merge {done.id}"


def test_a_version_deleted_before_its_merge_fails_the_merge(world: World) -> None:
    queued = world.merge()
    promotion.promote(world.db, world.tenant, "support", 1, actor="test")
    registry.delete_adapter(world.db, world.tenant, "support", actor="test")
    done = world.run(queued.id)
    assert done.status == JobStatus.FAILED and done.error is not None
    assert done.error["code"] == "model_not_found"
