"""core.quotas: per-tenant quotas on stored bytes, adapter versions, files and queued jobs,
on SQLite and PostgreSQL.

Over a quota the answer is 429 `insufficient_quota` naming what is used and the limit, and
nothing is stored: no row, no blob, no adapter files. Concurrent writers cannot both pass
on the same headroom.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from adapters import registry
from adapters.store import digest_dir
from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError
from core.models import Tenant
from core.quotas import Quotas, Usage, usage
from tests.adapters.test_promotion import make_env, register
from tests.adapters.test_validation import write_adapter
from trainer import files, job_queue, jobs

CHAT_LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
GENEROUS = Quotas(max_stored_bytes=10**12, max_adapter_versions=1000, max_files=1000, max_queued_jobs=1000)


def _set_limits(db: Database, tenant_id: str, **limits: int) -> None:
    with db.session() as s:
        s.get(Tenant, tenant_id).limits = limits  # type: ignore[union-attr]


def _over_quota(call: Any, *args: Any, **kwargs: Any) -> TailorError:
    with pytest.raises(TailorError) as info:
        call(*args, **kwargs)
    error = info.value
    assert (error.status, error.type, error.code) == (429, "insufficient_quota", "insufficient_quota")
    return error


@pytest.fixture
def env(db: Database, tmp_path: Path) -> Any:
    return make_env(db, tmp_path)


def test_tenant_values_replace_the_operator_defaults() -> None:
    own = GENEROUS.for_tenant({"max_files": 3, "max_queued_jobs": None, "requests_per_minute": 5})
    assert own == Quotas(max_stored_bytes=10**12, max_adapter_versions=1000, max_files=3, max_queued_jobs=1000)
    assert GENEROUS.for_tenant(None) == GENEROUS


def test_queued_jobs_quota(env: Any) -> None:
    db, acme, other = env[0], env[3], env[4]
    _set_limits(db, acme, max_queued_jobs=2)
    first = jobs.submit(db, acme, method="supervised", model="base", quotas=GENEROUS, actor="test")
    jobs.submit(db, acme, method="supervised", model="base", quotas=GENEROUS, actor="test")
    error = _over_quota(jobs.submit, db, acme, actor="test", method="supervised", model="base", quotas=GENEROUS)
    assert "quota of 2 queued fine-tuning jobs (max_queued_jobs): 2 used" in error.message
    assert len(jobs.list_jobs(db, acme)[0]) == 2  # nothing stored
    jobs.submit(
        db, other, method="supervised", model="base", quotas=GENEROUS, actor="test"
    )  # another tenant is unaffected
    # A started job leaves the queue and frees its place.
    assert job_queue.claim_next(db, "w", job_id=first.id) is not None
    jobs.submit(db, acme, method="supervised", model="base", quotas=GENEROUS, actor="test")


def test_operator_default_applies_without_a_tenant_value(env: Any) -> None:
    db, acme = env[0], env[3]
    tight = Quotas(max_stored_bytes=10**12, max_adapter_versions=1000, max_files=1000, max_queued_jobs=1)
    jobs.submit(db, acme, method="supervised", model="base", quotas=tight, actor="test")
    _over_quota(jobs.submit, db, acme, actor="test", method="supervised", model="base", quotas=tight)


def test_file_count_quota_stores_nothing_when_refused(env: Any) -> None:
    db, acme, tmp = env[0], env[3], env[5]
    blobs = BlobStore(str(tmp / "blobs"))
    _set_limits(db, acme, max_files=1)
    files.upload_file(db, blobs, acme, "a.jsonl", CHAT_LINE, files.PURPOSE, quotas=GENEROUS)
    error = _over_quota(files.upload_file, db, blobs, acme, "b.jsonl", CHAT_LINE, files.PURPOSE, quotas=GENEROUS)
    assert "quota of 1 files (max_files): 1 used, this request adds 1" in error.message
    assert len(blobs.list(f"files/{acme}")) == 1
    assert files.list_files(db, acme).items[0].filename == "a.jsonl"


def test_stored_bytes_quota_counts_files_and_adapter_versions(env: Any) -> None:
    db, store, limits, acme, _other, tmp = env
    blobs = BlobStore(str(tmp / "blobs"))
    limits = registry.ValidationLimits(
        base=limits.base, max_rank=limits.max_rank, max_bytes=limits.max_bytes, quotas=GENEROUS
    )
    version = register(env, "bot", write_adapter(tmp / "v1"), limits=limits)
    files.upload_file(db, blobs, acme, "a.jsonl", CHAT_LINE, files.PURPOSE, quotas=GENEROUS)
    with db.session() as s:
        used = usage(s, acme)
    assert used == Usage(stored_bytes=version.size_bytes + len(CHAT_LINE), adapter_versions=1, files=1, queued_jobs=0)
    _set_limits(db, acme, max_stored_bytes=used.stored_bytes + len(CHAT_LINE) - 1)
    error = _over_quota(files.upload_file, db, blobs, acme, "b.jsonl", CHAT_LINE, files.PURPOSE, quotas=GENEROUS)
    assert f"(max_stored_bytes): {used.stored_bytes} used, this request adds {len(CHAT_LINE)}" in error.message
    assert len(blobs.list(f"files/{acme}")) == 1
    bigger = write_adapter(tmp / "v2", r=8)
    _over_quota(register, env, "bot", bigger, limits=limits)
    # Refused before the store write: the new weights are nowhere in the store.
    assert not store.exists(digest_dir(bigger))
    assert [v.version for v in registry.get_adapter(db, acme, "bot").versions] == [1]


def test_adapter_versions_quota(env: Any) -> None:
    db, _store, limits, acme, other, tmp = env
    limits = registry.ValidationLimits(
        base=limits.base, max_rank=limits.max_rank, max_bytes=limits.max_bytes, quotas=GENEROUS
    )
    _set_limits(db, acme, max_adapter_versions=1)
    src = write_adapter(tmp / "src")
    register(env, "a", src, limits=limits)
    error = _over_quota(register, env, "b", src, limits=limits)
    assert "quota of 1 adapter versions (max_adapter_versions): 1 used" in error.message
    assert [a.name for a in registry.list_adapters(db, acme)] == ["a"]
    register(env, "b", src, tenant=other, limits=limits)


def test_concurrent_writers_never_pass_the_quota_together(env: Any) -> None:
    db, acme = env[0], env[3]
    _set_limits(db, acme, max_queued_jobs=3)
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        try:
            jobs.submit(db, acme, method="supervised", model="base", quotas=GENEROUS, actor="test")
            outcomes.append("queued")
        except TailorError as e:
            outcomes.append(e.code or "")

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(outcomes) == ["insufficient_quota"] * 5 + ["queued"] * 3
    assert len(jobs.list_jobs(db, acme)[0]) == 3
