"""trainer.job_queue.claim_next is fair across tenants, on SQLite and on PostgreSQL.

One tenant queueing many jobs must not make another tenant's job wait behind all of them:
claims take turns between tenants (fewest running, then longest since a start), and stay
first-in first-out within a tenant.
"""

from __future__ import annotations

from core.db import Database
from tests.trainer.job_world import add_tenant, queue_job
from trainer import job_queue


def _tenant(db: Database, name: str) -> str:
    return add_tenant(db, name, max_queued_jobs=20)


def _queue(db: Database, tenant_id: str, n: int) -> list[str]:
    return [queue_job(db, tenant_id).id for _ in range(n)]


def _claim_all(db: Database, *, finish: bool) -> list[str]:
    """Claim jobs until none is left, in claim order; `finish`: each succeeds before the next claim."""
    claimed = []
    while (job := job_queue.claim_next(db, "w")) is not None:
        claimed.append(job.id)
        if finish:
            job_queue.finish_job(db, job.id, "w", status="succeeded")
    return claimed


def test_second_tenant_is_claimed_second_while_the_first_runs(db: Database) -> None:
    a, b = _tenant(db, "a"), _tenant(db, "b")
    a_jobs = _queue(db, a, 10)
    b_jobs = _queue(db, b, 1)
    assert _claim_all(db, finish=False) == [a_jobs[0], b_jobs[0], *a_jobs[1:]]


def test_tenants_take_turns_when_one_worker_finishes_each_job(db: Database) -> None:
    a, b = _tenant(db, "a"), _tenant(db, "b")
    a_jobs = _queue(db, a, 3)
    b_jobs = _queue(db, b, 2)
    # Nothing runs between claims: the tenant whose last start is older goes next.
    assert _claim_all(db, finish=True) == [a_jobs[0], b_jobs[0], a_jobs[1], b_jobs[1], a_jobs[2]]


def test_tenant_with_fewer_running_jobs_goes_first(db: Database) -> None:
    a, b = _tenant(db, "a"), _tenant(db, "b")
    _queue(db, b, 1)
    b_second = _queue(db, b, 1)[0]
    a_job = _queue(db, a, 1)[0]
    first = job_queue.claim_next(db, "w1")  # b's oldest: nobody runs anything, b never started
    assert first is not None and first.tenant_id == b
    second = job_queue.claim_next(db, "w2")
    assert second is not None and second.id == a_job  # b has one running, a none
    third = job_queue.claim_next(db, "w3")
    assert third is not None and third.id == b_second
