"""The fine-tuning job queue: jobs, their events, checkpoints and evaluations, in the database.

A job is a row in `jobs`. The gateway (or the CLI) creates it `queued`; a trainer worker
claims it (`running`), beats its heartbeat at every training step, and finishes it
(`succeeded` | `failed` | `cancelled`). Everything here is a plain function on
`core.db.Database`, shared by the worker, the OpenAI routes, the admin API and tests.

Claiming, and why it is safe:

- PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED` picks the next queued job (see below) that
  no other transaction holds, so any number of workers on any number of hosts claim side by side
  without waiting on each other and without ever sharing a job.
- SQLite: an atomic conditional `UPDATE jobs SET status='running' ... WHERE id=? AND
  status='queued'`, checking the row count. SQLite serialises writers, so two claimers can
  never both win a job; but every claim and heartbeat takes the single database write lock,
  so the supported setup is ONE worker per SQLite file. Run several workers on PostgreSQL.

Which job is next is fair across tenants: the queued job of the tenant with the fewest
running jobs, then of the tenant whose last job started longest ago (never: first), so
tenants take turns; within a tenant, the oldest. One tenant queueing a hundred jobs delays
another tenant's job by at most one job per free worker. Each tenant may have at most
`max_queued_jobs` waiting (core.quotas).

A worker that dies stops beating; `requeue_stale` puts its job back in the queue (or fails
it after `max_attempts`). That can never leave a half-trained adapter registered: the
worker registers a version only after training finished and its files are complete, and
the adapter store commits a version only once all of its files are written.

Hyperparameters (OpenAI's names, "auto", and Tailor's extras) are trainer.hyperparameters'.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import aliased

from adapters import promotion
from adapters.validation import validate_adapter_name
from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError, bad_request, conflict, not_found
from core.ids import new_id, utcnow
from core.models import Evaluation, Job, JobCheckpoint, JobEvent
from core.quotas import WAITING_JOB_STATES, Quotas, Usage, operator_quotas, reserve
from trainer import datasets, files, hyperparameters
from trainer.datasets import Snapshot

# distillation trains like supervised, on a teacher's answers (trainer.distill).
METHODS = ("supervised", "dpo", "kto", "distillation")
SFT_METHODS = hyperparameters.SFT_METHODS
TERMINAL = ("succeeded", "failed", "cancelled")

# Which file kind (core.models.StoredFile.kind) each method trains on.
FILE_KIND = {"supervised": "sft", "dpo": "preference", "kto": "rated", "distillation": "prompts"}


class JobLost(TailorError):
    """The worker no longer owns the job (requeued as stale, or finished elsewhere)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(409, f"job {job_id} is no longer held by this worker", code="job_lost")
        self.job_id = job_id


# -----------------------------------------------------------------------------
# values handed out


@dataclass(frozen=True)
class JobInfo:
    id: str
    tenant_id: str
    status: str
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


@dataclass(frozen=True)
class EventInfo:
    id: int
    job_id: str
    level: str  # info | warn | error
    message: str
    data: dict[str, Any] | None
    created_at: datetime

    @property
    def type(self) -> str:
        # A training-progress event carries OpenAI's metric keys; everything else is prose.
        return "metrics" if self.data and "train_loss" in self.data else "message"


@dataclass(frozen=True)
class CheckpointInfo:
    id: str
    job_id: str
    step: int
    metrics: dict[str, Any]
    path: str  # blob-store key prefix holding the adapter files at this step
    created_at: datetime


@dataclass(frozen=True)
class EvaluationInfo:
    id: str
    tenant_id: str
    job_id: str | None
    candidate_version_id: str
    baseline_version_id: str | None
    dataset_id: str | None
    candidate_metrics: dict[str, Any]
    baseline_metrics: dict[str, Any]
    decision: str
    reasons: list[str]
    report_key: str | None
    created_at: datetime


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone-aware columns; all are UTC.
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _job_info(j: Job) -> JobInfo:
    return JobInfo(
        id=j.id,
        tenant_id=j.tenant_id,
        status=j.status,
        method=j.method,
        model=j.model,
        adapter_name=j.adapter_name,
        suffix=j.suffix,
        training_file=j.training_file,
        validation_file=j.validation_file,
        dataset_id=j.dataset_id,
        hyperparameters=dict(j.hyperparameters or {}),
        config=dict(j.config) if j.config else None,
        seed=j.seed,
        source=j.source,
        fine_tuned_model=j.fine_tuned_model,
        result_version_id=j.result_version_id,
        decision=j.decision,
        metrics=j.metrics,
        error=j.error,
        trained_tokens=j.trained_tokens,
        cancel_requested=bool(j.cancel_requested),
        attempts=j.attempts,
        worker_id=j.worker_id,
        heartbeat_at=_aware(j.heartbeat_at),
        created_at=_aware(j.created_at),  # type: ignore[arg-type]
        started_at=_aware(j.started_at),
        finished_at=_aware(j.finished_at),
    )


def _event_info(e: JobEvent) -> EventInfo:
    return EventInfo(
        id=e.id, job_id=e.job_id, level=e.level, message=e.message, data=e.data, created_at=_aware(e.created_at)
    )  # type: ignore[arg-type]


def _checkpoint_info(c: JobCheckpoint) -> CheckpointInfo:
    return CheckpointInfo(
        id=c.id, job_id=c.job_id, step=c.step, metrics=dict(c.metrics), path=c.path, created_at=_aware(c.created_at)
    )  # type: ignore[arg-type]


def _evaluation_info(e: Evaluation) -> EvaluationInfo:
    return EvaluationInfo(
        id=e.id,
        tenant_id=e.tenant_id,
        job_id=e.job_id,
        candidate_version_id=e.candidate_version_id,
        baseline_version_id=e.baseline_version_id,
        dataset_id=e.dataset_id,
        candidate_metrics=dict(e.candidate_metrics),
        baseline_metrics=dict(e.baseline_metrics),
        decision=e.decision,
        reasons=list(e.reasons),
        report_key=e.report_key,
        created_at=_aware(e.created_at),  # type: ignore[arg-type]
    )


# -----------------------------------------------------------------------------
# hyperparameters


def validate_hyperparameters(
    method: str, given: dict[str, Any] | None, *, max_lora_rank: int = hyperparameters.MAX_LORA_RANK
) -> dict[str, Any]:
    """The method must be one Tailor trains with; then trainer.hyperparameters.validate."""
    if method not in METHODS:
        raise bad_request(
            f"Unsupported fine-tuning method {method!r}; use one of {', '.join(METHODS)}.", param="method.type"
        )
    return hyperparameters.validate(method, given, max_lora_rank=max_lora_rank)


# -----------------------------------------------------------------------------
# creating and reading jobs


def feedback_snapshot(db: Database, blobs: BlobStore, tenant_id: str, adapter_name: str) -> Snapshot:
    """The dataset a feedback-driven job for `adapter_name` trains on.

    Once the name serves, the feedback on its own answers (plus imported examples); before
    that, everything the tenant said, since no answer of this adapter exists yet.
    """
    served = promotion.active_version(db, tenant_id, adapter_name) is not None
    model = adapter_name if served else None
    return datasets.build_from_feedback(db, blobs, tenant_id, model=model)


def training_examples(snapshot: Snapshot, method: str) -> int:
    """How many examples of `snapshot` the method trains on; a 400 when there are none."""
    if method in SFT_METHODS:
        n, what = len(snapshot.train_sft), "chat examples"
    elif method == "kto":
        n, what = len(snapshot.train_ratings), "rated answers"
    else:
        n, what = len(snapshot.train_preferences), "preference pairs"
    if n == 0:
        raise bad_request(
            f"Dataset {snapshot.id} has no {what} to train the {method} method on.", code="no_training_data"
        )
    return n


def _check_file(db: Database, tenant_id: str, file_id: str, method: str, param: str) -> None:
    try:
        info = files.get_file(db, tenant_id, file_id, param=param)
    except TailorError:
        # OpenAI answers an unusable file id in a job request with a 400 naming the field.
        raise bad_request(
            f"Invalid {param}: no fine-tune file {file_id!r}.", code="invalid_file", param=param
        ) from None
    if info.purpose != files.PURPOSE:
        raise bad_request(
            f"File {file_id!r} has purpose {info.purpose!r}; upload it with purpose {files.PURPOSE!r}.",
            code="invalid_file",
            param=param,
        )
    if info.kind != FILE_KIND[method]:
        raise bad_request(
            f"File {file_id!r} holds {info.kind} examples; the {method} method needs {FILE_KIND[method]} examples.",
            code="invalid_file",
            param=param,
        )


def create_job(
    db: Database,
    tenant_id: str,
    *,
    method: str,
    model: str,
    adapter_name: str | None = None,
    training_file: str | None = None,
    validation_file: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    seed: int = 0,
    suffix: str | None = None,
    source: str = "api",
    dataset_id: str | None = None,
    max_lora_rank: int = hyperparameters.MAX_LORA_RANK,
    config: dict[str, Any] | None = None,
    quotas: Quotas | None = None,
) -> JobInfo:
    """Queue a fine-tuning job. Without `adapter_name` the result is named "ft-<short job id>".

    Files must be the tenant's own fine-tune uploads of the kind the method needs; with no
    training file and no dataset_id the worker builds the dataset from the tenant's feedback.
    A tenant with `max_queued_jobs` jobs waiting gets a 429 (`quotas`: the operator's
    defaults; None: the process's settings).
    """
    hp = validate_hyperparameters(method, hyperparameters, max_lora_rank=max_lora_rank)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1:
        raise bad_request("seed must be an integer from 0 to 2147483647.", param="seed")
    for param, file_id in (("training_file", training_file), ("validation_file", validation_file)):
        if file_id is not None:
            _check_file(db, tenant_id, file_id, method, param)
    if validation_file is not None and training_file is None:
        raise bad_request("validation_file needs a training_file.", param="validation_file")
    job_id = new_id("ftjob")
    name = adapter_name or f"ft-{job_id.split('-', 1)[1][:8]}"
    try:
        validate_adapter_name(name)
    except TailorError as e:
        raise bad_request(e.message, param="suffix") from None
    if method == "distillation" and (config is None or training_file is None) and dataset_id is None:
        raise bad_request(
            "A distillation job needs its inputs (training_file) and settings (method.distillation).",
            param="training_file" if config is not None else "method.distillation",
        )
    with db.session() as s:
        reserve(s, tenant_id, operator_quotas(quotas), Usage(queued_jobs=1))
        job = Job(
            id=job_id,
            tenant_id=tenant_id,
            status="queued",
            method=method,
            model=model,
            adapter_name=name,
            suffix=suffix,
            training_file=training_file,
            validation_file=validation_file,
            dataset_id=dataset_id,
            hyperparameters=hp,
            config=config,
            seed=seed,
            source=source,
        )
        s.add(job)
        s.flush()
        s.add(
            JobEvent(
                job_id=job_id,
                level="info",
                message=f"Created fine-tuning job: {job_id}",
                data={"method": method, "model": model, "adapter_name": name},
            )
        )
        return _job_info(job)


def _owned(s: Any, tenant_id: str | None, job_id: str) -> Job:
    job = s.get(Job, job_id)
    # Same answer for unknown and foreign jobs: a tenant cannot probe others' job ids.
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise not_found(
            f"Fine-tuning job {job_id!r} not found.", code="fine_tuning_job_not_found", param="fine_tuning_job_id"
        )
    return job


def get_job(db: Database, tenant_id: str | None, job_id: str) -> JobInfo:
    """One job; `tenant_id` None (operators, the worker) skips the ownership check."""
    with db.session() as s:
        return _job_info(_owned(s, tenant_id, job_id))


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise bad_request("limit must be between 1 and 100.", param="limit")


def list_jobs(db: Database, tenant_id: str, *, after: str | None = None, limit: int = 20) -> tuple[list[JobInfo], bool]:
    """The tenant's jobs, newest first; `after` is the last job id of the previous page.

    Returns (page, has_more).
    """
    _check_limit(limit)
    with db.session() as s:
        query = select(Job).where(Job.tenant_id == tenant_id)
        if after is not None:
            cursor = s.get(Job, after)
            if cursor is None or cursor.tenant_id != tenant_id:
                raise bad_request(f"No fine-tuning job {after!r} to list after.", param="after")
            query = query.where(
                or_(Job.created_at < cursor.created_at, and_(Job.created_at == cursor.created_at, Job.id < cursor.id))
            )
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        rows = list(s.scalars(query))
        return [_job_info(j) for j in rows[:limit]], len(rows) > limit


def cancel_job(db: Database, tenant_id: str | None, job_id: str) -> JobInfo:
    """Queued: cancelled at once. Running: flagged; the worker stops before its next step.

    Cancelling a cancelled job is a no-op; a finished one is a 409.
    """
    with db.session() as s:
        job = _owned(s, tenant_id, job_id)
        if job.status == "cancelled":
            return _job_info(job)
        if job.status in TERMINAL:
            raise conflict(
                f"Fine-tuning job {job_id} has already {job.status}; it cannot be cancelled.", code="job_finished"
            )
        if job.status == "running":
            if not job.cancel_requested:
                job.cancel_requested = True
                s.add(
                    JobEvent(
                        job_id=job_id,
                        level="info",
                        message="Cancellation requested; stopping at the next training step",
                    )
                )
        else:  # queued / validating_files: no worker holds it yet
            job.status, job.finished_at, job.cancel_requested = "cancelled", utcnow(), True
            _drop_unneeded_secrets(job)
            s.add(JobEvent(job_id=job_id, level="info", message="Job cancelled"))
        s.flush()
        return _job_info(job)


# -----------------------------------------------------------------------------
# events and checkpoints


def add_event(
    db: Database, job_id: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None
) -> EventInfo:
    """Append an event. Progress events use OpenAI's metric keys (step, train_loss, ...)."""
    if level not in ("info", "warn", "error"):
        raise ValueError(f"event level must be info, warn or error, not {level!r}")
    with db.session() as s:
        event = JobEvent(job_id=job_id, level=level, message=message, data=data)
        s.add(event)
        s.flush()
        return _event_info(event)


def list_events(
    db: Database, tenant_id: str | None, job_id: str, *, after: int | None = None, limit: int = 20
) -> tuple[list[EventInfo], bool]:
    """A job's events, newest first (as OpenAI lists them); `after` is the last id seen."""
    _check_limit(limit)
    with db.session() as s:
        _owned(s, tenant_id, job_id)
        query = select(JobEvent).where(JobEvent.job_id == job_id)
        if after is not None:
            query = query.where(JobEvent.id < after)
        rows = list(s.scalars(query.order_by(JobEvent.id.desc()).limit(limit + 1)))
        return [_event_info(e) for e in rows[:limit]], len(rows) > limit


def add_checkpoint(db: Database, job_id: str, *, step: int, metrics: dict[str, Any], path: str) -> CheckpointInfo:
    with db.session() as s:
        row = JobCheckpoint(id=new_id("ftckpt"), job_id=job_id, step=step, metrics=metrics, path=path)
        s.add(row)
        s.flush()
        return _checkpoint_info(row)


def list_checkpoints(
    db: Database, tenant_id: str | None, job_id: str, *, after: str | None = None, limit: int = 10
) -> tuple[list[CheckpointInfo], bool]:
    """A job's checkpoints, latest step first; `after` is the last checkpoint id seen."""
    _check_limit(limit)
    with db.session() as s:
        _owned(s, tenant_id, job_id)
        query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
        if after is not None:
            cursor = s.get(JobCheckpoint, after)
            if cursor is None or cursor.job_id != job_id:
                raise bad_request(f"No checkpoint {after!r} of this job to list after.", param="after")
            same_step = and_(JobCheckpoint.step == cursor.step, JobCheckpoint.id < cursor.id)
            query = query.where(or_(JobCheckpoint.step < cursor.step, same_step))
        rows = list(s.scalars(query.order_by(JobCheckpoint.step.desc(), JobCheckpoint.id.desc()).limit(limit + 1)))
        return [_checkpoint_info(c) for c in rows[:limit]], len(rows) > limit


# -----------------------------------------------------------------------------
# the worker's side: claim, beat, record, finish


def _fair_order() -> tuple[Any, ...]:
    """ORDER BY terms for queued jobs: the tenant with the fewest running jobs first, then
    the tenant whose last job started longest ago (never started: first), then the oldest."""
    other = aliased(Job)
    running = (
        select(func.count(other.id))
        .where(other.tenant_id == Job.tenant_id, other.status == "running")
        .scalar_subquery()
    )
    last_start = select(func.max(other.started_at)).where(other.tenant_id == Job.tenant_id).scalar_subquery()
    return running, last_start.asc().nulls_first(), Job.created_at, Job.id


def claim_next(db: Database, worker_id: str, *, job_id: str | None = None) -> JobInfo | None:
    """Take the next queued job in fair order (or the queued job `job_id`) for `worker_id`:
    status running, attempts + 1. None when there is none to take."""
    queued = select(Job).where(Job.status == "queued")
    if job_id is not None:
        queued = queued.where(Job.id == job_id)
    queued = queued.order_by(*_fair_order())
    if db.engine.dialect.name == "postgresql":
        with db.session() as s:
            job = s.scalar(queued.limit(1).with_for_update(skip_locked=True))
            if job is None:
                return None
            now = utcnow()
            job.status, job.worker_id, job.attempts = "running", worker_id, job.attempts + 1
            job.heartbeat_at, job.started_at = now, job.started_at or now
            s.flush()
            return _job_info(job)
    # SQLite (and anything else): read candidates, then win one with a conditional UPDATE.
    for _ in range(5):
        with db.session() as s:
            ids = list(s.scalars(queued.with_only_columns(Job.id).limit(5)))
        if not ids:
            return None
        for candidate in ids:
            now = utcnow()
            with db.session() as s:
                won = s.execute(
                    update(Job)
                    .where(Job.id == candidate, Job.status == "queued")
                    .values(
                        status="running",
                        worker_id=worker_id,
                        attempts=Job.attempts + 1,
                        heartbeat_at=now,
                        started_at=now,
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount
            if won == 1:
                return get_job(db, None, candidate)
    return None


def heartbeat(db: Database, job_id: str, worker_id: str) -> bool:
    """Refresh the claim; return whether cancellation was requested.

    Raises JobLost when the job is no longer this worker's (requeued as stale, finished).
    """
    with db.session() as s:
        beat = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        if beat != 1:
            raise JobLost(job_id)
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def update_running(
    db: Database,
    job_id: str,
    worker_id: str,
    *,
    dataset_id: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> None:
    """Record what the worker decided once it knows the data: the snapshot and concrete knobs.

    Once the snapshot is recorded a distillation job has its teacher's answers, so its
    sealed teacher key is dropped here: a retry loads the snapshot and never asks again.
    """
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if dataset_id is not None:
        values["dataset_id"] = dataset_id
    if hyperparameters is not None:
        values["hyperparameters"] = hyperparameters
    with db.session() as s:
        done = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if done != 1:
            raise JobLost(job_id)
        _drop_unneeded_secrets(s.get(Job, job_id))


def finish_job(
    db: Database,
    job_id: str,
    worker_id: str,
    *,
    status: str,
    fine_tuned_model: str | None = None,
    result_version_id: str | None = None,
    decision: str | None = None,
    metrics: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    trained_tokens: int | None = None,
) -> JobInfo:
    """Move a running job this worker holds to a terminal status (raises JobLost otherwise)."""
    if status not in TERMINAL:
        raise ValueError(f"finish_job status must be one of {TERMINAL}, not {status!r}")
    with db.session() as s:
        done = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
            .values(
                status=status,
                fine_tuned_model=fine_tuned_model,
                result_version_id=result_version_id,
                decision=decision,
                metrics=metrics,
                error=error,
                trained_tokens=trained_tokens,
                finished_at=utcnow(),
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if done != 1:
            raise JobLost(job_id)
        _drop_unneeded_secrets(s.get(Job, job_id))
    return get_job(db, None, job_id)


def _drop_unneeded_secrets(job: Job | None) -> None:
    """Drop a job's sealed teacher key once nothing can use it: called in the transaction of
    every transition, so the key never outlives its use by a commit.

    The key is used only to ask the teacher, which a job does once, while it waits or runs
    and has no dataset yet; an ended job, or one whose answers are in its snapshot, is done
    with it.
    """
    if job is None or (job.status in (*WAITING_JOB_STATES, "running") and job.dataset_id is None):
        return
    teacher = (job.config or {}).get("teacher")
    if isinstance(teacher, dict) and teacher.get("api_key_sealed"):
        job.config = {**(job.config or {}), "teacher": {**teacher, "api_key_sealed": None}}


def requeue_stale(db: Database, stale_after_s: float, max_attempts: int = 2) -> list[str]:
    """Running jobs whose worker stopped beating: back to the queue, or failed when they have
    had `max_attempts` tries (a job that keeps killing its worker must not loop forever).
    A job whose cancellation was requested is cancelled instead. Returns the ids touched.
    """
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    with db.session() as s:
        stale = list(
            s.execute(
                select(Job.id, Job.attempts, Job.cancel_requested, Job.worker_id).where(
                    Job.status == "running", Job.heartbeat_at < cutoff
                )
            )
        )
    touched: list[str] = []
    for job_id, attempts, cancel_requested, worker_id in stale:
        message = f"Worker {worker_id} stopped sending heartbeats for over {stale_after_s:g} s"
        if cancel_requested:
            values: dict[str, Any] = {"status": "cancelled", "finished_at": utcnow()}
            event, level = f"{message}; job cancelled as requested", "warn"
        elif attempts < max_attempts:
            values = {"status": "queued", "worker_id": None, "heartbeat_at": None}
            event, level = f"{message}; requeued (attempt {attempts} of {max_attempts})", "warn"
        else:
            error = {
                "code": "worker_lost",
                "param": None,
                "message": f"{message}, on {attempts} attempt(s); giving up.",
            }
            values = {"status": "failed", "finished_at": utcnow(), "error": error}
            event, level = error["message"], "error"
        with db.session() as s:
            # Conditional on the heartbeat still being old: a worker that came back to life
            # in between keeps its job.
            done = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running", Job.heartbeat_at < cutoff)
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount
            if done == 1:
                _drop_unneeded_secrets(s.get(Job, job_id))
                s.add(JobEvent(job_id=job_id, level=level, message=event))
                touched.append(job_id)
    return touched


# -----------------------------------------------------------------------------
# evaluations


def record_evaluation(
    db: Database,
    *,
    tenant_id: str,
    job_id: str | None,
    candidate_version_id: str,
    baseline_version_id: str | None,
    dataset_id: str | None,
    candidate_metrics: dict[str, Any],
    baseline_metrics: dict[str, Any],
    decision: str,
    reasons: list[str],
    report_key: str | None,
) -> EvaluationInfo:
    with db.session() as s:
        row = Evaluation(
            id=new_id("eval"),
            tenant_id=tenant_id,
            job_id=job_id,
            candidate_version_id=candidate_version_id,
            baseline_version_id=baseline_version_id,
            dataset_id=dataset_id,
            candidate_metrics=candidate_metrics,
            baseline_metrics=baseline_metrics,
            decision=decision,
            reasons=reasons,
            report_key=report_key,
        )
        s.add(row)
        s.flush()
        return _evaluation_info(row)


def get_evaluation(db: Database, tenant_id: str | None, job_id: str) -> EvaluationInfo:
    """The evaluation a job produced (404 while there is none yet)."""
    with db.session() as s:
        job = _owned(s, tenant_id, job_id)
        row = s.scalar(
            select(Evaluation).where(Evaluation.job_id == job.id).order_by(Evaluation.created_at.desc()).limit(1)
        )
        if row is None:
            raise not_found(f"Fine-tuning job {job_id} has no evaluation yet.", code="evaluation_not_found")
        return _evaluation_info(row)
