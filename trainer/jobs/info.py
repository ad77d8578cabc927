"""What a job is, as handed out: `JobInfo` (a job row's values) and `ResumePoint` (where a
paused job goes on from)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from core.models import Job
from core.rows import from_row
from core.states import JobStatus


@dataclass(frozen=True)
class JobInfo:
    id: str
    tenant_id: str
    status: JobStatus
    method: str
    model: str
    adapter_name: str
    suffix: str | None
    training_file: str | None
    validation_file: str | None
    dataset_id: str | None
    hyperparameters: dict[str, Any]
    config: dict[str, Any] | None
    seed: int
    source: str
    fine_tuned_model: str | None
    result_version_id: str | None
    decision: str | None
    metrics: dict[str, Any] | None
    error: dict[str, Any] | None
    trained_tokens: int | None
    cancel_requested: bool
    attempts: int
    worker_id: str | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    pause_requested: bool = False
    resume_point: dict[str, Any] | None = None  # ResumePoint.to_json(), once the job has paused
    metadata: dict[str, str] | None = None  # the client's OpenAI metadata

    @property
    def resume(self) -> ResumePoint | None:
        return ResumePoint.from_json(self.resume_point) if self.resume_point else None


@dataclass(frozen=True)
class ResumePoint:
    """Where a paused job goes on from.

    Restored on resume: the adapter weights (the checkpoint saved at `step`), the remaining
    `total_steps - step` optimizer steps, the learning rate where the linear schedule had
    brought it, and the step numbering, losses and token count so far. Not restored: the
    optimizer's state (AdamW's moments start again from zero), the order of the data (the
    remaining steps draw batches afresh, so they see as many examples, not the same ones),
    and early stopping's evaluations before the pause (the resumed run keeps the best of its own).
    """

    step: int  # optimizer steps done
    total_steps: int  # the run's length in optimizer steps
    checkpoint_id: str | None  # the checkpoint at `step`; None: nothing saved, training starts over
    losses: tuple[float, ...] = ()  # training loss of each step done
    trained_tokens: int = 0

    @property
    def remaining_steps(self) -> int:
        return max(0, self.total_steps - self.step)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["losses"] = list(self.losses)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResumePoint:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["losses"] = tuple(values.get("losses") or ())
        return cls(**values)


def job_info(j: Job) -> JobInfo:
    return from_row(
        JobInfo,
        j,
        status=JobStatus(j.status),
        hyperparameters=dict(j.hyperparameters or {}),
        config=dict(j.config) if j.config else None,
        cancel_requested=bool(j.cancel_requested),
        pause_requested=bool(j.pause_requested),
        resume_point=dict(j.resume_point) if j.resume_point else None,
        metadata=dict(j.user_metadata) if j.user_metadata is not None else None,
    )
