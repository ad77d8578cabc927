"""trainer.jobs' actions write their own audit events: submit, cancel, pause, resume.

Exactly one event per action, naming the actor, in the action's own transaction: a failure
while it commits leaves neither the job change nor the event. A refused action writes none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from core import audit
from core.db import Database
from core.errors import TailorError
from core.models import AuditEvent, Job
from tests.trainer.job_world import add_tenant
from trainer import job_queue, jobs

ACTOR = "key:key-tester"


def _events(db: Database) -> list[AuditEvent]:
    with db.session() as s:
        rows = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        s.expunge_all()
        return rows


def _submit(db: Database, tenant: str, actor: str = "setup") -> jobs.JobInfo:
    return jobs.submit(
        db,
        tenant,
        actor=actor,
        method="supervised",
        model="base",
        adapter_name="helper",
        hyperparameters={"n_epochs": 2},
    )


def _running(db: Database, tenant: str) -> str:
    job = _submit(db, tenant)
    assert job_queue.claim_next(db, "w1", job_id=job.id) is not None
    return job.id


def _paused(db: Database, tenant: str) -> str:
    job_id = _running(db, tenant)
    point = jobs.ResumePoint(step=3, total_steps=10, checkpoint_id="ckpt-1")
    job_queue.mark_paused(db, job_id, "w1", point)
    return job_id


def _queued(db: Database, tenant: str) -> str:
    return _submit(db, tenant).id


# (action, setup returning the job id or None, the call, the event's expected `after`)
ACTIONS: list[tuple[str, Callable[..., str | None], Callable[..., jobs.JobInfo], Callable[[str], dict[str, Any]]]] = [
    (
        "job.create",
        lambda db, t: None,
        lambda db, t, _id: _submit(db, t, actor=ACTOR),
        lambda job_id: {
            "id": job_id,
            "method": "supervised",
            "model": "base",
            "adapter_name": "helper",
            "training_file": None,
            "dataset_id": None,
            "hyperparameters": jobs.validate_hyperparameters("supervised", {"n_epochs": 2}),
            "source": "api",
        },
    ),
    (
        "job.cancel",
        _queued,
        lambda db, t, job_id: jobs.cancel_job(db, t, job_id, actor=ACTOR),
        lambda _id: {"status": "cancelled", "cancel_requested": True},
    ),
    (
        "job.pause",
        _running,
        lambda db, t, job_id: jobs.pause_job(db, t, job_id, actor=ACTOR),
        lambda _id: {"status": "running", "pause_requested": True},
    ),
    (
        "job.resume",
        _paused,
        lambda db, t, job_id: jobs.resume_job(db, t, job_id, actor=ACTOR),
        lambda _id: {"status": "queued", "resume_step": 3},
    ),
]
IDS = [a[0] for a in ACTIONS]


def _jobs_state(db: Database) -> list[tuple[Any, ...]]:
    with db.session() as s:
        return [
            (j.id, j.status, bool(j.cancel_requested), bool(j.pause_requested))
            for j in s.scalars(select(Job).order_by(Job.id))
        ]


@pytest.mark.parametrize(("action", "setup", "call", "after"), ACTIONS, ids=IDS)
def test_each_action_writes_one_event(
    db: Database, tenant: str, action: str, setup: Callable[..., str | None], call: Any, after: Any
) -> None:
    job_id = setup(db, tenant)
    seen = len(_events(db))
    job = call(db, tenant, job_id)
    fresh = _events(db)[seen:]
    assert [(e.action, e.actor, e.tenant_id, e.target, e.before) for e in fresh] == [
        (action, ACTOR, tenant, job.id, None)
    ]
    assert fresh[0].after == after(job.id)


@pytest.mark.parametrize(("action", "setup", "call", "after"), ACTIONS, ids=IDS)
def test_a_failure_in_the_transaction_keeps_neither_change_nor_event(
    db: Database,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    setup: Callable[..., str | None],
    call: Any,
    after: Any,
) -> None:
    job_id = setup(db, tenant)
    seen, before = len(_events(db)), _jobs_state(db)
    written = []
    real = audit.record

    def record_then_fail(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        written.append(kwargs["action"])
        raise RuntimeError("the database went away")

    monkeypatch.setattr(audit, "record", record_then_fail)
    with pytest.raises(RuntimeError, match="went away"):
        call(db, tenant, job_id)
    monkeypatch.undo()
    assert written == [action]
    assert len(_events(db)) == seen and _jobs_state(db) == before


def test_refused_actions_write_nothing(db: Database, tenant: str) -> None:
    other = add_tenant(db, "globex")
    queued = _queued(db, tenant)
    seen = len(_events(db))
    refusals = [
        lambda: jobs.submit(db, tenant, actor=ACTOR, method="reinforcement", model="base"),
        lambda: jobs.cancel_job(db, other, queued, actor=ACTOR),  # another tenant's job
        lambda: jobs.pause_job(db, tenant, queued, actor=ACTOR),  # not running
        lambda: jobs.resume_job(db, tenant, queued, actor=ACTOR),  # not paused
    ]
    for refused in refusals:
        with pytest.raises(TailorError):
            refused()
    assert len(_events(db)) == seen
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
