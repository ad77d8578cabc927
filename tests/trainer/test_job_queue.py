"""trainer.job_queue: claiming (one winner per job, even with two claimers racing),
heartbeats, cancelling, finishing, and the sweep that requeues or fails jobs whose worker went quiet;
on SQLite, and on PostgreSQL when a cluster can start.
"""

from __future__ import annotations

import threading

import pytest

from core.db import Database
from core.errors import TailorError
from core.models import Tenant
from tests.dbutil import migrated
from tests.pg import create_database
from tests.trainer.job_world import add_tenant, backdate_heartbeat, queue_job, stale_after
from trainer import job_queue, job_records, jobs
from trainer.job_queue import JobLost


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    return sqlite_db


# -----------------------------------------------------------------------------
# claiming, beating, finishing


def test_claim_takes_the_oldest_and_only_once(db: Database, tenant: str) -> None:
    a, b = queue_job(db, tenant), queue_job(db, tenant)
    first = job_queue.claim_next(db, "w1")
    assert first is not None and first.id == a.id
    assert (first.status, first.worker_id, first.attempts) == ("running", "w1", 1)
    assert first.started_at is not None and first.heartbeat_at is not None
    second = job_queue.claim_next(db, "w2")
    assert second is not None and second.id == b.id
    assert job_queue.claim_next(db, "w3") is None


def test_claim_a_named_job(db: Database, tenant: str) -> None:
    older, newer = queue_job(db, tenant), queue_job(db, tenant)
    got = job_queue.claim_next(db, "w1", job_id=newer.id)
    assert got is not None and got.id == newer.id
    assert job_queue.claim_next(db, "w2", job_id=newer.id) is None  # taken
    assert jobs.get_job(db, tenant, older.id).status == "queued"


def _race(urls: list[str], tenant: str, n_jobs: int) -> tuple[list[str], list[str]]:
    """Two claimers with their own engines drain the queue at once; who got what."""
    setup = Database(urls[0])
    with setup.session() as s:
        s.get(Tenant, tenant).limits = {"max_queued_jobs": n_jobs}  # type: ignore[union-attr]
    for _ in range(n_jobs):
        queue_job(setup, tenant)
    setup.dispose()
    got: dict[str, list[str]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def claimer(name: str, url: str) -> None:
        worker_db = Database(url)
        start.wait()
        while (job := job_queue.claim_next(worker_db, name)) is not None:
            got[name].append(job.id)
        worker_db.dispose()

    threads = [threading.Thread(target=claimer, args=(name, url)) for name, url in zip("ab", urls, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return got["a"], got["b"]


def test_two_claimers_never_share_a_job_sqlite(db: Database, tenant: str) -> None:
    a, b = _race([db.url, db.url], tenant, 30)
    assert not set(a) & set(b)
    assert len(a) + len(b) == 30
    statuses = {j.worker_id for j in jobs.list_jobs(db, tenant, limit=100)[0]}
    assert statuses <= {"a", "b"}


def test_heartbeat_reports_cancellation_and_ownership(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant)
    job_queue.claim_next(db, "w1")
    assert job_queue.heartbeat(db, job.id, "w1") is False
    with pytest.raises(JobLost):
        job_queue.heartbeat(db, job.id, "w2")
    cancelled = jobs.cancel_job(db, tenant, job.id, actor="test")
    assert (cancelled.status, cancelled.cancel_requested) == ("running", True)
    assert job_queue.heartbeat(db, job.id, "w1") is True
    done = job_queue.finish_job(db, job.id, "w1", status="cancelled")
    assert done.status == "cancelled" and done.finished_at is not None
    with pytest.raises(JobLost):
        job_queue.heartbeat(db, job.id, "w1")


def test_cancel_queued_is_immediate_and_finished_jobs_refuse(db: Database, tenant: str) -> None:
    queued = queue_job(db, tenant)
    out = jobs.cancel_job(db, tenant, queued.id, actor="test")
    assert out.status == "cancelled" and out.finished_at is not None
    assert jobs.cancel_job(db, tenant, queued.id, actor="test").status == "cancelled"  # idempotent
    assert job_queue.claim_next(db, "w1") is None

    running = queue_job(db, tenant)
    job_queue.claim_next(db, "w1")
    job_queue.finish_job(
        db,
        running.id,
        "w1",
        status="succeeded",
        fine_tuned_model="x@v1",
        decision="promoted",
        metrics={"train_loss": 0.1},
        trained_tokens=42,
    )
    with pytest.raises(TailorError) as err:
        jobs.cancel_job(db, tenant, running.id, actor="test")
    assert err.value.status == 409
    info = jobs.get_job(db, tenant, running.id)
    assert (info.fine_tuned_model, info.decision, info.trained_tokens) == ("x@v1", "promoted", 42)


def test_finish_needs_the_claim(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant)
    with pytest.raises(JobLost):
        job_queue.finish_job(db, job.id, "w1", status="succeeded")  # never claimed
    job_queue.claim_next(db, "w1")
    with pytest.raises(JobLost):
        job_queue.finish_job(db, job.id, "w2", status="failed")
    with pytest.raises(ValueError):
        job_queue.finish_job(db, job.id, "w1", status="running")
    error = {"code": "boom", "message": "it broke", "param": None}
    assert job_queue.finish_job(db, job.id, "w1", status="failed", error=error).error == error


def test_requeue_stale_retries_then_fails(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant)
    fresh = queue_job(db, tenant)
    job_queue.claim_next(db, "dead")
    job_queue.claim_next(db, "alive")
    backdate_heartbeat(db, job.id, 120)

    assert job_queue.requeue_stale(db, stale_after_s=60, max_attempts=2) == [job.id]
    again = jobs.get_job(db, tenant, job.id)
    assert (again.status, again.worker_id, again.attempts) == ("queued", None, 1)
    assert jobs.get_job(db, tenant, fresh.id).status == "running"
    with pytest.raises(JobLost):  # the dead worker, should it wake up, may not write any more
        job_queue.heartbeat(db, job.id, "dead")

    second = job_queue.claim_next(db, "w2")
    assert second is not None and second.id == job.id and second.attempts == 2
    backdate_heartbeat(db, job.id, 120)
    assert job_queue.requeue_stale(db, stale_after_s=60, max_attempts=2) == [job.id]
    failed = jobs.get_job(db, tenant, job.id)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error is not None and failed.error["code"] == "worker_lost"
    events, _ = job_records.list_events(db, tenant, job.id)
    assert events[0].level == "error" and "heartbeats" in events[0].message
    assert job_queue.requeue_stale(db, stale_after_s=60) == []


def test_a_stale_job_goes_on_from_its_latest_stored_checkpoint(db: Database, tenant: str) -> None:
    job, bare = queue_job(db, tenant), queue_job(db, tenant)
    for claimed in (job, bare):
        assert job_queue.claim_next(db, "dead", job_id=claimed.id) is not None
        backdate_heartbeat(db, claimed.id, 120)
    for step, loss in ((1, 2.0), (2, 1.5), (3, 1.0)):
        job_records.add_event(db, job.id, f"Step {step}/6", data={"step": step, "total_steps": 6, "train_loss": loss})
    for step in (1, 2):
        job_records.add_checkpoint(db, job.id, step=step, metrics={}, path=f"p/{step}", digest=f"{step:064d}")

    assert sorted(job_queue.requeue_stale(db, stale_after_s=60)) == sorted([job.id, bare.id])
    point = jobs.get_job(db, tenant, job.id).resume
    assert point is not None and (point.step, point.total_steps, point.losses) == (2, 6, (2.0, 1.5))
    assert point.checkpoint_id == job_records.list_checkpoints(db, tenant, job.id)[0][0].id
    events, _ = job_records.list_events(db, tenant, job.id)
    assert events[0].message.endswith("; the next attempt resumes from the checkpoint at step 2 of 6")
    assert jobs.get_job(db, tenant, bare.id).resume is None  # no checkpoint: it starts over


def test_an_unreadable_step_event_costs_only_its_own_jobs_resume(db: Database, tenant: str) -> None:
    odd, other = queue_job(db, tenant), queue_job(db, tenant)
    for claimed in (odd, other):
        assert job_queue.claim_next(db, "dead", job_id=claimed.id) is not None
        backdate_heartbeat(db, claimed.id, 120)
    job_records.add_event(db, odd.id, "Step 1/6", data={"step": 1, "total_steps": 6, "train_loss": None})
    job_records.add_checkpoint(db, odd.id, step=1, metrics={}, path="p/1", digest=f"{1:064d}")

    assert sorted(job_queue.requeue_stale(db, stale_after_s=60)) == sorted([odd.id, other.id])
    assert jobs.get_job(db, tenant, odd.id).status == "queued"
    assert jobs.get_job(db, tenant, odd.id).resume is None  # starts over


def test_stale_job_with_cancellation_requested_is_cancelled(db: Database, tenant: str) -> None:
    assert stale_after(db, tenant, jobs.cancel_job).status == "cancelled"


# -----------------------------------------------------------------------------
# PostgreSQL: SKIP LOCKED lets workers claim side by side


@pytest.mark.postgres
def test_postgres_claims_are_exclusive_and_sweeps_work(postgres_url: str) -> None:
    url = create_database(postgres_url, "jobs")
    db = migrated(url)
    try:
        tenant = add_tenant(db, "acme")
        a, b = _race([url, url], tenant, 30)
        assert not set(a) & set(b)
        assert len(a) + len(b) == 30
        victim = a[0] if a else b[0]
        backdate_heartbeat(db, victim, 120)
        assert job_queue.requeue_stale(db, stale_after_s=60) == [victim]
        claimed = job_queue.claim_next(db, "again")
        assert claimed is not None and claimed.id == victim and claimed.attempts == 2
        assert job_queue.heartbeat(db, victim, "again") is False
        # The metadata filter's JSON operators on PostgreSQL
        tagged = queue_job(db, tenant, metadata={"team": "geo", "quote's": "it's"})
        for metadata in ({"team": "geo"}, {"quote's": "it's"}):
            assert [j.id for j in jobs.list_jobs(db, tenant, metadata=metadata)[0]] == [tagged.id]
        assert tagged.id not in [j.id for j in jobs.list_jobs(db, tenant, without_metadata=True, limit=100)[0]]
    finally:
        db.dispose()
