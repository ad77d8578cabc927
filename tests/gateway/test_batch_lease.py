"""Claiming and holding batches (gateway.batches.lease), on SQLite and PostgreSQL: one holder at
a time, a lapsed lease taken over, lines recorded once and only by the holder, and the states a
batch moves through."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from core.db import Database
from core.errors import TailorError
from core.ids import new_id, utcnow
from core.models import Batch, Tenant
from gateway.batches import lease, store

LEASE_S = 60.0


def add_batch(db: Database, tenant: str = "acme", **fields: object) -> str:
    now = utcnow()
    with db.session() as s:
        if s.get(Tenant, f"ten-{tenant}") is None:
            s.add(Tenant(id=f"ten-{tenant}", name=tenant))
    row = {
        "id": new_id("batch", "_"),
        "tenant_id": f"ten-{tenant}",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-x",
        "completion_window": "24h",
        "status": "validating",
        "total": 3,
        "completed": 0,
        "failed": 0,
        "created_at": now,
        "expires_at": now + timedelta(hours=24),
        **fields,
    }
    with db.session() as s:
        s.add(Batch(**row))
    return str(row["id"])


def test_one_holder_and_a_lapsed_lease_is_taken_over(db: Database) -> None:
    batch_id = add_batch(db)
    now = utcnow()
    a = lease.claim(db, "gw-a", lease_s=LEASE_S, now=now)
    assert a is not None and a.id == batch_id and a.status == "in_progress" and a.in_progress_at is not None
    assert lease.claim(db, "gw-b", lease_s=LEASE_S, now=now + timedelta(seconds=30)) is None
    # Even one that read the batch as free a moment ago cannot take it now.
    assert lease.take(db, batch_id, "gw-b", lease_s=LEASE_S, now=now + timedelta(seconds=30)) is None
    with pytest.raises(lease.BatchLost):
        lease.renew(db, batch_id, "gw-b", lease_s=LEASE_S)
    with pytest.raises(lease.BatchLost):
        lease.record(db, batch_id, "gw-b", line=0, failed=False, output={"x": 1}, lease_s=LEASE_S)

    assert lease.record(db, batch_id, "gw-a", line=0, failed=False, output={"n": 0}, lease_s=LEASE_S) == "in_progress"
    # gw-a stops renewing (it crashed): once the lease has run out, gw-b takes the batch over.
    later = utcnow() + timedelta(seconds=LEASE_S + 1)
    b = lease.claim(db, "gw-b", lease_s=LEASE_S, now=later)
    assert b is not None and b.id == batch_id and b.status == "in_progress" and b.in_progress_at == a.in_progress_at
    with pytest.raises(lease.BatchLost):
        lease.record(db, batch_id, "gw-a", line=1, failed=False, output={"n": 1}, lease_s=LEASE_S)
    with pytest.raises(lease.BatchLost):
        lease.renew(db, batch_id, "gw-a", lease_s=LEASE_S)
    lease.record(db, batch_id, "gw-b", line=1, failed=True, output={"n": 1}, lease_s=LEASE_S, now=later)
    # A line recorded twice (a second gateway's run of a line in flight) stays counted once.
    lease.record(db, batch_id, "gw-b", line=1, failed=True, output={"n": 9}, lease_s=LEASE_S, now=later)
    assert lease.done_lines(db, batch_id) == {0, 1}
    assert [(r.line, r.failed, r.output) for r in lease.results(db, batch_id)] == [
        (0, False, {"n": 0}),
        (1, True, {"n": 1}),
    ]
    got = store.get(db, "ten-acme", batch_id)
    assert (got.completed, got.failed) == (1, 1)


def test_concurrent_claims_have_one_winner(db: Database) -> None:
    batch_id = add_batch(db)
    with ThreadPoolExecutor(max_workers=6) as pool:
        won = list(pool.map(lambda i: lease.claim(db, f"gw-{i}", lease_s=LEASE_S), range(6)))
    winners = [w for w in won if w is not None]
    assert len(winners) == 1 and winners[0].id == batch_id


def test_claims_are_fair_across_tenants(db: Database) -> None:
    first = add_batch(db, "acme")
    second = add_batch(db, "acme")
    other = add_batch(db, "beta")
    assert lease.claim(db, "gw", lease_s=LEASE_S).id == first  # type: ignore[union-attr]
    # acme already has a batch running: beta's goes before acme's second, though newer.
    assert lease.claim(db, "gw", lease_s=LEASE_S).id == other  # type: ignore[union-attr]
    assert lease.claim(db, "gw", lease_s=LEASE_S).id == second  # type: ignore[union-attr]
    assert lease.claim(db, "gw", lease_s=LEASE_S) is None


def test_ending_finishing_and_releasing(db: Database) -> None:
    batch_id = add_batch(db)
    lease.claim(db, "gw-a", lease_s=LEASE_S)
    lease.record(db, batch_id, "gw-a", line=0, failed=False, output={}, lease_s=LEASE_S)
    assert lease.ending(db, batch_id, "gw-a", all_ran=False) == "expired"
    assert lease.ending(db, batch_id, "gw-a", all_ran=True) == "completed"
    assert store.get(db, "ten-acme", batch_id).status == "finalizing"
    # A gateway taking over a finalizing batch finalizes it.
    lease.release(db, batch_id, "gw-a")
    taken = lease.claim(db, "gw-b", lease_s=LEASE_S)
    assert taken is not None and taken.status == "finalizing"
    with pytest.raises(lease.BatchLost):
        lease.finish(db, batch_id, "gw-a", "completed")
    ended = lease.finish(db, batch_id, "gw-b", "completed", output_file_id="file-out")
    assert (ended.status, ended.output_file_id) == ("completed", "file-out") and ended.completed_at is not None
    assert lease.done_lines(db, batch_id) == set()  # the lines are in the files now
    assert lease.claim(db, "gw-c", lease_s=LEASE_S) is None  # an ended batch is nobody's to claim


def test_cancel_reaches_the_holder(db: Database) -> None:
    untaken = add_batch(db)
    cancelled = store.cancel(db, "ten-acme", untaken)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at == cancelled.cancelling_at
    assert lease.claim(db, "gw", lease_s=LEASE_S) is None

    running = add_batch(db)
    lease.claim(db, "gw", lease_s=LEASE_S)
    assert store.cancel(db, "ten-acme", running).status == "cancelling"
    assert store.cancel(db, "ten-acme", running).status == "cancelling"  # asking again changes nothing
    assert lease.renew(db, running, "gw", lease_s=LEASE_S) == "cancelling"
    assert lease.record(db, running, "gw", line=0, failed=False, output={}, lease_s=LEASE_S) == "cancelling"
    assert lease.ending(db, running, "gw", all_ran=False) == "cancelled"
    ended = lease.finish(db, running, "gw", "cancelled")
    assert ended.status == "cancelled" and ended.cancelled_at is not None and ended.completed == 1


def test_a_finalizing_or_ended_batch_cannot_be_cancelled(db: Database) -> None:
    for status in ("finalizing", "completed", "failed", "expired"):
        batch_id = add_batch(db, status=status)
        with pytest.raises(TailorError) as refused:
            store.cancel(db, "ten-acme", batch_id)
        assert (refused.value.status, refused.value.code) == (400, "batch_not_cancellable")
