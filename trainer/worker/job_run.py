"""What one job run carries from stage to stage, and the heartbeat that covers its quiet stretches."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from adapters.registry import VersionInfo
from core.db import Database
from trainer import job_queue
from trainer.job_queue import JobLost
from trainer.job_records import CheckpointInfo
from trainer.jobs import JobInfo, ResumePoint

log = logging.getLogger("tailor.trainer")


@dataclass
class JobRun:
    """What one job run knows as it goes (also what cleanup needs after a failure)."""

    job: JobInfo
    workdir: Path
    version: VersionInfo | None = None
    # A resumed job's starting point (its last pause), and the checkpoints this run saved.
    resumed: ResumePoint | None = None
    checkpoints: dict[int, CheckpointInfo] = field(default_factory=dict)


class Heartbeat:
    """Beats the job's heartbeat from a background thread while no training step does.

    Steps beat on their own (should_stop); this covers model loading and evaluation.
    """

    def __init__(self, db: Database, job_id: str, worker_id: str, interval_s: float) -> None:
        self.db, self.job_id, self.worker_id, self.interval_s = db, job_id, worker_id, interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                job_queue.heartbeat(self.db, self.job_id, self.worker_id)
            except JobLost:
                return  # the main thread learns it at its next beat
            except Exception:  # noqa: BLE001 - a transient database error must not kill the beat
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()
