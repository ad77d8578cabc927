"""A distillation job's sealed teacher key is dropped as soon as nothing can use it.

The key is needed only while the job waits or runs and has not yet recorded its dataset
(the teacher's answers). Every transition past that point (the dataset recorded,
succeeded, failed, cancelled while queued or running, and each outcome of the stale-job
sweep) drops it in the same transaction.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from core.blobs import BlobStore
from core.config import Settings
from core.db import Database
from core.ids import utcnow
from core.models import Job
from core.sealing import seal
from trainer import files, job_queue, jobs

SECRET = "sk-teacher-secret"
PROMPT_LINE = b'{"messages": [{"role": "user", "content": "hi"}]}\n'


@pytest.fixture
def sealed(tmp_path: Path) -> str:
    return seal(Settings(data_dir=tmp_path), SECRET)


@pytest.fixture
def inputs(db: Database, tenant: str, tmp_path: Path) -> str:
    blobs = BlobStore(str(tmp_path / "blobs"))
    return files.upload_file(db, blobs, tenant, "in.jsonl", PROMPT_LINE, files.PURPOSE).id


def _distill_job(db: Database, tenant: str, sealed: str, inputs: str, dataset_id: str | None = None) -> str:
    teacher = {"model": "big", "base_url": "https://teacher.example/v1", "api_key_sealed": sealed, "api_key_env": None}
    config = {"system": None, "examples": [], "teacher": teacher, "max_tokens": 64}
    job = jobs.submit(
        db,
        tenant,
        method="distillation",
        model="base",
        config=config,
        training_file=inputs,
        dataset_id=dataset_id,
        actor="test",
    )
    return job.id


def _stored_key(db: Database, job_id: str) -> str | None:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.config is not None
        return job.config["teacher"]["api_key_sealed"]


def _claim(db: Database, job_id: str) -> None:
    assert job_queue.claim_next(db, "w", job_id=job_id) is not None


def _go_stale(db: Database, job_id: str, *, attempts: int | None = None, cancel: bool = False) -> None:
    values: dict[str, object] = {"heartbeat_at": utcnow() - timedelta(seconds=600), "cancel_requested": cancel}
    if attempts is not None:
        values["attempts"] = attempts
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))
    assert job_queue.requeue_stale(db, stale_after_s=60, max_attempts=2) == [job_id]


def test_waiting_and_running_jobs_keep_the_key(db: Database, tenant: str, sealed: str, inputs: str) -> None:
    job_id = _distill_job(db, tenant, sealed, inputs)
    assert _stored_key(db, job_id) == sealed
    _claim(db, job_id)
    job_queue.update_running(db, job_id, "w", hyperparameters={"n_epochs": 1})
    assert _stored_key(db, job_id) == sealed
    assert SECRET not in repr(jobs.get_job(db, tenant, job_id).config)


def test_recording_the_dataset_drops_the_key(db: Database, tenant: str, sealed: str, inputs: str) -> None:
    job_id = _distill_job(db, tenant, sealed, inputs)
    _claim(db, job_id)
    job_queue.update_running(db, job_id, "w", dataset_id="d" * 64)
    assert _stored_key(db, job_id) is None


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_finishing_drops_the_key(db: Database, tenant: str, sealed: str, inputs: str, status: str) -> None:
    job_id = _distill_job(db, tenant, sealed, inputs)
    _claim(db, job_id)
    job_queue.finish_job(db, job_id, "w", status=status)
    assert _stored_key(db, job_id) is None


def test_cancelling_a_queued_job_drops_the_key(db: Database, tenant: str, sealed: str, inputs: str) -> None:
    job_id = _distill_job(db, tenant, sealed, inputs)
    jobs.cancel_job(db, tenant, job_id, actor="test")
    assert _stored_key(db, job_id) is None


def test_stale_job_cancelled_by_the_sweep_drops_the_key(db: Database, tenant: str, sealed: str, inputs: str) -> None:
    job_id = _distill_job(db, tenant, sealed, inputs)
    _claim(db, job_id)
    _go_stale(db, job_id, cancel=True)
    assert jobs.get_job(db, None, job_id).status == "cancelled"
    assert _stored_key(db, job_id) is None


def test_stale_job_failed_by_the_sweep_drops_the_key(db: Database, tenant: str, sealed: str, inputs: str) -> None:
    job_id = _distill_job(db, tenant, sealed, inputs)
    _claim(db, job_id)
    _go_stale(db, job_id, attempts=2)
    assert jobs.get_job(db, None, job_id).status == "failed"
    assert _stored_key(db, job_id) is None


def test_stale_job_requeued_with_its_answers_drops_the_key(db: Database, tenant: str, sealed: str, inputs: str) -> None:
    job_id = _distill_job(db, tenant, sealed, inputs, dataset_id="d" * 64)
    _claim(db, job_id)
    _go_stale(db, job_id)
    assert jobs.get_job(db, None, job_id).status == "queued"
    assert _stored_key(db, job_id) is None


def test_stale_job_requeued_before_its_teacher_answered_keeps_the_key(
    db: Database, tenant: str, sealed: str, inputs: str
) -> None:
    # The retry still has to ask the teacher; without the key it could only fail.
    job_id = _distill_job(db, tenant, sealed, inputs)
    _claim(db, job_id)
    _go_stale(db, job_id)
    assert jobs.get_job(db, None, job_id).status == "queued"
    assert _stored_key(db, job_id) == sealed
