"""trainer.worker: each attempt at a job works in a directory of its own. A killed worker's
training process goes on until its next step and writes its progress by path; the next attempt
on the same host (claimed once the job was requeued) must not read those lines as its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.db import Database
from tests.trainer.job_world import backdate_heartbeat, queue_job
from trainer import job_queue
from trainer.worker import Worker
from trainer.worker.job_run import JobRun


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    return sqlite_db


def test_a_requeued_job_trains_apart_from_the_attempt_before(
    db: Database, tenant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdirs: list[Path] = []
    orphan_wrote: list[Path] = []

    def pipeline(_worker: Worker, run: JobRun) -> None:
        if workdirs:
            # The first attempt's training process, still running, writes its next step's line
            # where it always has, while this attempt trains.
            progress = workdirs[0] / "train" / "progress.jsonl"
            progress.parent.mkdir(parents=True, exist_ok=True)
            progress.write_text('{"event": "step", "step": 3}\n')
            orphan_wrote.extend(p for p in run.workdir.rglob("*") if p.is_file())
        workdirs.append(run.workdir)

    monkeypatch.setattr(Worker, "_pipeline", pipeline)
    settings = Settings(data_dir=tmp_path, trainer_devices="cpu")
    job = queue_job(db, tenant)
    assert Worker(settings, db, None, None, worker_id="w1").run_once()  # type: ignore[arg-type]
    backdate_heartbeat(db, job.id, 120)  # the first worker died holding the job
    assert job_queue.requeue_stale(db, stale_after_s=60) == [job.id]
    assert Worker(settings, db, None, None, worker_id="w2").run_once()  # type: ignore[arg-type]
    assert workdirs[0] != workdirs[1]
    assert orphan_wrote == []  # nothing in the second attempt's files
