"""Tests for gateway.interaction_log: batched, off-the-hot-path writes to a real SQLite DB."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from core.db import Database
from core.models import Interaction
from gateway.interaction_log import InteractionLog, InteractionRecord
from gateway.tenants import create_tenant, delete_tenant
from tests.gateway.interaction_records import chat_record


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    return sqlite_db


@pytest.fixture
def tenant_id(db: Database) -> str:
    return create_tenant(db, "acme").id


def rec(tenant_id: str, i: int, **kw: object) -> InteractionRecord:
    kw.setdefault("request", {"i": i})
    return chat_record(f"chatcmpl-{i:06d}", tenant_id, **kw)


def count(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Interaction))


def spy_batches(log: InteractionLog, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = log._write

    def write(batch: list[InteractionRecord]) -> None:
        real(batch)
        sizes.append(len(batch))

    monkeypatch.setattr(log, "_write", write)
    return sizes


async def test_record_fields_round_trip(db: Database, tenant_id: str) -> None:
    log = InteractionLog(db)
    log.start()
    log.record(
        rec(
            tenant_id,
            1,
            stream=True,
            adapter_version_id="ver-1",
            engine="http://e0",
            response_text="héllo ✓",
            finish_reason="stop",
            prompt_tokens=3,
            completion_tokens=5,
            latency_ms=12.5,
            ttft_ms=4.0,
            status_code=200,
            request={"messages": [{"role": "user", "content": "hi"}], "n": 1},
        )
    )
    log.record(rec(tenant_id, 2, status_code=503, error="engine down"))
    await log.stop()
    with db.session() as s:
        rows = {r.id: r for r in s.scalars(select(Interaction))}
    one, two = rows["chatcmpl-000001"], rows["chatcmpl-000002"]
    assert one.tenant_id == tenant_id and one.api_key_id == "key-1"
    assert one.stream is True and one.engine == "http://e0" and one.adapter_version_id == "ver-1"
    assert one.request == {"messages": [{"role": "user", "content": "hi"}], "n": 1}
    assert (one.response_text, one.finish_reason) == ("héllo ✓", "stop")
    assert (one.prompt_tokens, one.completion_tokens, one.latency_ms, one.ttft_ms) == (
        3,
        5,
        12.5,
        4.0,
    )
    assert (two.status_code, two.error, two.stream, two.response_text) == (
        503,
        "engine down",
        False,
        None,
    )
    assert two.created_at is not None
    assert log.written == 2 and log.dropped == 0 and log.write_errors == 0


async def test_record_does_not_write_inline(db: Database, tenant_id: str) -> None:
    log = InteractionLog(db)
    log.record(rec(tenant_id, 1))  # not started: only queued
    assert log.queue.qsize() == 1 and count(db) == 0
    log.start()
    await log.stop()
    assert count(db) == 1


async def test_writes_in_batches(db: Database, tenant_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    log = InteractionLog(db, batch_size=50, flush_interval_s=30)
    sizes = spy_batches(log, monkeypatch)
    for i in range(120):
        log.record(rec(tenant_id, i))
    log.start()
    await log.stop()
    assert sizes == [50, 50, 20]
    assert count(db) == 120 and log.written == 120


async def test_background_flush_while_running(db: Database, tenant_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    log = InteractionLog(db, batch_size=100, flush_interval_s=0.01)
    sizes = spy_batches(log, monkeypatch)
    log.start()
    try:
        for i in range(3):
            log.record(rec(tenant_id, i))
        for _ in range(1000):  # up to ~10 s; normally a few ms
            if log.written == 3:
                break
            await asyncio.sleep(0.01)
        assert log.written == 3 and count(db) == 3  # written without stop()
        assert sum(sizes) == 3
    finally:
        await log.stop()


async def test_stop_drains_everything(db: Database, tenant_id: str) -> None:
    log = InteractionLog(db, batch_size=200, flush_interval_s=30)
    log.start()
    for i in range(1000):
        log.record(rec(tenant_id, i))
    await log.stop()
    assert count(db) == 1000
    assert log.written == 1000 and log.dropped == 0 and log.queue.empty()
    await log.stop()  # a second stop is a no-op


async def test_stop_without_start_is_noop(db: Database) -> None:
    await InteractionLog(db).stop()


async def test_failing_database_is_retried_until_written(
    db: Database, tenant_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = InteractionLog(db, batch_size=100, flush_interval_s=30)
    real = log._write
    failures = {"left": 2}
    attempts: list[int] = []

    def flaky(batch: list[InteractionRecord]) -> None:
        attempts.append(len(batch))
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("INSERT INTO interactions", {}, Exception("database is locked"))
        real(batch)

    monkeypatch.setattr(log, "_write", flaky)
    for i in range(250):
        log.record(rec(tenant_id, i))
    log.start()
    await log.stop()
    assert count(db) == 250
    assert log.written == 250 and log.dropped == 0
    assert log.write_errors == 2
    assert attempts == [100, 100, 100, 100, 50]  # the failed batch is retried whole


async def test_queue_full_drops_are_counted(db: Database, tenant_id: str) -> None:
    log = InteractionLog(db, max_queue=5)
    for i in range(8):
        log.record(rec(tenant_id, i))
    assert log.dropped == 3 and log.queue.qsize() == 5
    log.start()
    await log.stop()
    with db.session() as s:
        ids = sorted(s.scalars(select(Interaction.id)))
    assert ids == [f"chatcmpl-{i:06d}" for i in range(5)]  # the first ones are kept
    assert log.written == 5 and log.dropped == 3


async def test_bad_record_does_not_block_the_log(db: Database, tenant_id: str) -> None:
    """A record the database can never take (its tenant was deleted meanwhile) is dropped
    and counted; it must not be retried forever, holding up every later record and stop()."""
    gone = create_tenant(db, "gone").id
    delete_tenant(db, "gone")
    log = InteractionLog(db, batch_size=10, flush_interval_s=30)
    for i in range(25):
        log.record(rec(gone if i == 7 else tenant_id, i))
    log.start()
    await asyncio.wait_for(log.stop(), timeout=30)
    with db.session() as s:
        ids = set(s.scalars(select(Interaction.id)))
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert ids == {f"chatcmpl-{i:06d}" for i in range(25) if i != 7}
    assert log.written == 24 and log.dropped == 1 and log.write_errors >= 1
