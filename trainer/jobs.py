"""The fine-tuning job queue: jobs, their events, checkpoints and evaluations, in the database.

A job is a row in `jobs`. The gateway (or the CLI) creates it `queued`; a trainer worker
claims it (`running`), beats its heartbeat at every training step, and finishes it
(`succeeded` | `failed` | `cancelled`). Everything here is a plain function on
`core.db.Database`, shared by the worker, the OpenAI routes, the admin API and tests.

Pausing (OpenAI's `pause` / `resume`): `pause_job` flags a running job; its training run
saves a checkpoint at its next step and stops, and the worker lets go of it as `paused`
(`mark_paused`, with a `ResumePoint`: that checkpoint and the steps done and left).
`resume_job` queues it again; the next worker to claim it trains the remaining steps from
that checkpoint's adapter (trainer.worker). A pause asked for before training starts
takes effect at the first training step; one asked for after the last step has no effect.

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
it after `max_attempts`; cancels or pauses it when that was asked for). That can never
leave a half-trained adapter registered: the worker registers a version only after
training finished and its files are complete, and the adapter store commits a version only
once all of its files are written.

Hyperparameters (OpenAI's names, "auto", and Tailor's extras) are trainer.hyperparameters'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import aliased

from adapters import promotion
from adapters.validation import validate_adapter_name
from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError, bad_request, conflict, not_found
from core.ids import new_id, utcnow
from core.metadata import check_metadata, has_pair
from core.models import Evaluation, Job, JobCheckpoint, JobEvent
from core.quotas import WAITING_JOB_STATES, Quotas, Usage, operator_quotas, reserve
from trainer import datasets, files, hyperparameters
from trainer.datasets import Snapshot

# distillation trains like supervised, on a teacher's answers (trainer.distill).
METHODS = ("supervised", "dpo", "kto", "distillation")
SFT_METHODS = hyperparameters.SFT_METHODS
TERMINAL = ("succeeded", "failed", "cancelled")
# What a training run is asked to do at its next step (stop_request).
StopRequest = Literal["cancel", "pause"]
# `metadata` keys that start so are Tailor's own, shown beside the client's on the job.
RESERVED_METADATA_PREFIX = "tailor_"

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
    digest: str | None = None  # in the adapter store: callable as a model (adapters.checkpoints)


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
        pause_requested=bool(j.pause_requested),
        resume_point=dict(j.resume_point) if j.resume_point else None,
        metadata=dict(j.user_metadata) if j.user_metadata is not None else None,
    )


def _event_info(e: JobEvent) -> EventInfo:
    return EventInfo(
        id=e.id, job_id=e.job_id, level=e.level, message=e.message, data=e.data, created_at=_aware(e.created_at)
    )  # type: ignore[arg-type]


def _checkpoint_info(c: JobCheckpoint) -> CheckpointInfo:
    return CheckpointInfo(
        id=c.id,
        job_id=c.job_id,
        step=c.step,
        metrics=dict(c.metrics),
        path=c.path,
        created_at=_aware(c.created_at),  # type: ignore[arg-type]
        digest=c.digest,
    )


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
    metadata: Mapping[str, str] | None = None,
    integrations: Sequence[str] = (),
) -> JobInfo:
    """Queue a fine-tuning job. Without `adapter_name` the result is named "ft-<short job id>".

    Files must be the tenant's own fine-tune uploads of the kind the method needs; with no
    training file and no dataset_id the worker builds the dataset from the tenant's feedback.
    A tenant with `max_queued_jobs` jobs waiting gets a 429 (`quotas`: the operator's
    defaults; None: the process's settings). `metadata`: the client's OpenAI metadata.
    `integrations`: the types of the integrations the client asked for (e.g. "wandb"), which
    Tailor does not run: the job says so in a warning event, and trains all the same.
    """
    hp = validate_hyperparameters(method, hyperparameters, max_lora_rank=max_lora_rank)
    user_metadata = check_job_metadata(metadata)
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
        if user_metadata:
            job.user_metadata = user_metadata  # else SQL NULL: `metadata=null` lists it
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
        if integrations:
            kinds = sorted(set(integrations))
            s.add(
                JobEvent(
                    job_id=job_id,
                    level="warn",
                    message=f"Integrations ignored: Tailor does not run {', '.join(kinds)}; this job's metrics "
                    "are in its events, checkpoints and report",
                    data={"ignored_integrations": kinds},
                )
            )
        return _job_info(job)


def check_job_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    """The client's metadata within OpenAI's bounds, and clear of Tailor's own `tailor_` keys
    (a 400 naming `metadata` otherwise); None when there is none."""
    if not metadata:
        return None
    try:
        checked = check_metadata(metadata)
    except ValueError as exc:
        raise bad_request(f"Invalid metadata: {exc}.", code="invalid_value", param="metadata") from None
    reserved = sorted(k for k in checked if k.startswith(RESERVED_METADATA_PREFIX))
    if reserved:
        raise bad_request(
            f"metadata keys starting with {RESERVED_METADATA_PREFIX!r} are Tailor's own (shown on every job); "
            f"rename {reserved[0]!r}.",
            code="invalid_value",
            param="metadata",
        )
    return checked


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


def list_jobs(
    db: Database,
    tenant_id: str,
    *,
    after: str | None = None,
    limit: int = 20,
    metadata: Mapping[str, str] | None = None,
    without_metadata: bool = False,
) -> tuple[list[JobInfo], bool]:
    """The tenant's jobs, newest first; `after` is the last job id of the previous page.
    `metadata`: only jobs whose metadata holds every one of these pairs; `without_metadata`:
    only jobs created without metadata.

    Returns (page, has_more).
    """
    _check_limit(limit)
    if metadata and without_metadata:
        raise bad_request("Filter by metadata pairs or by metadata=null, not both.", param="metadata")
    with db.session() as s:
        query = select(Job).where(Job.tenant_id == tenant_id)
        if without_metadata:
            query = query.where(Job.user_metadata.is_(None))
        dialect = s.get_bind().dialect.name
        for key, value in sorted((metadata or {}).items()):
            query = query.where(has_pair(Job.user_metadata, dialect, key, value))
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


def pause_job(db: Database, tenant_id: str | None, job_id: str) -> JobInfo:
    """Ask a running job to pause: its training saves a checkpoint at the next step and stops,
    and the job becomes `paused` (see mark_paused). Asking again while it runs is a no-op;
    a job that is not running (or is being cancelled) is a 400.
    """
    with db.session() as s:
        job = _owned(s, tenant_id, job_id)
        if job.status != "running":
            now = "is already paused" if job.status == "paused" else f"is {job.status.replace('_', ' ')}"
            raise bad_request(
                f"Fine-tuning job {job_id} {now}; only a running job can be paused.", code="job_not_running"
            )
        if job.cancel_requested:
            raise bad_request(
                f"Fine-tuning job {job_id} is being cancelled; it cannot be paused.", code="job_cancel_requested"
            )
        if not job.pause_requested:
            job.pause_requested = True
            s.add(
                JobEvent(
                    job_id=job_id,
                    level="info",
                    message="Pause requested; the job saves a checkpoint and pauses at its next training step",
                )
            )
        s.flush()
        return _job_info(job)


def resume_job(db: Database, tenant_id: str | None, job_id: str, *, quotas: Quotas | None = None) -> JobInfo:
    """Queue a paused job again; a worker continues it from its resume point. A job that is
    not paused is a 400; resuming takes a place in the tenant's queue (429 when it is full)."""
    with db.session() as s:
        job = _owned(s, tenant_id, job_id)
        if job.status != "paused":
            raise bad_request(
                f"Fine-tuning job {job_id} is {job.status.replace('_', ' ')}, not paused; only a paused job "
                "can be resumed.",
                code="job_not_paused",
            )
        reserve(s, job.tenant_id, operator_quotas(quotas), Usage(queued_jobs=1))
        # The pause ended its attempt cleanly: the tries left for crashes start again.
        job.status, job.pause_requested, job.attempts = "queued", False, 0
        job.worker_id, job.heartbeat_at = None, None
        point = ResumePoint.from_json(job.resume_point) if job.resume_point else None
        if point is not None and point.checkpoint_id is not None:
            message = f"Job resumed; queued to continue from step {point.step} of {point.total_steps}"
        else:
            message = "Job resumed; queued to train from the start (it paused before saving a checkpoint)"
        s.add(JobEvent(job_id=job_id, level="info", message=message))
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


def add_checkpoint(
    db: Database, job_id: str, *, step: int, metrics: dict[str, Any], path: str, digest: str | None = None
) -> CheckpointInfo:
    """Record a checkpoint: its files at `path` in the blob store and, with `digest`, in the
    adapter store (then it is callable as a model: adapters.checkpoints)."""
    with db.session() as s:
        row = JobCheckpoint(id=new_id("ftckpt"), job_id=job_id, step=step, metrics=metrics, path=path, digest=digest)
        s.add(row)
        s.flush()
        return _checkpoint_info(row)


def get_checkpoint(db: Database, job_id: str, checkpoint_id: str) -> CheckpointInfo:
    with db.session() as s:
        row = s.get(JobCheckpoint, checkpoint_id)
        if row is None or row.job_id != job_id:
            raise not_found(f"Checkpoint {checkpoint_id!r} of job {job_id} not found.", code="checkpoint_not_found")
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


def stop_request(db: Database, job_id: str, worker_id: str) -> StopRequest | None:
    """Refresh the claim; return what the job was asked to do: "cancel" (which wins over a
    pause), "pause", or None to go on.

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
        cancel, pause = s.execute(select(Job.cancel_requested, Job.pause_requested).where(Job.id == job_id)).one()
        return "cancel" if cancel else "pause" if pause else None


def heartbeat(db: Database, job_id: str, worker_id: str) -> bool:
    """Refresh the claim; return whether cancellation was requested (a pause is honoured only
    by a training run: stop_request). Raises JobLost like stop_request."""
    return stop_request(db, job_id, worker_id) == "cancel"


def mark_paused(db: Database, job_id: str, worker_id: str, point: ResumePoint | None) -> JobInfo:
    """The worker lets go of a running job it paused: `paused`, to go on from `point` (None:
    it paused before a checkpoint, so it trains from the start; a resume point of an earlier
    pause stays then). A cancellation asked for meanwhile wins: the job is cancelled instead.
    Raises JobLost when the job is no longer this worker's."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.worker_id != worker_id or job.status != "running":
            raise JobLost(job_id)
        if job.cancel_requested:
            job.status, job.finished_at = "cancelled", utcnow()
            _drop_unneeded_secrets(job)
            s.add(JobEvent(job_id=job_id, level="info", message="Job cancelled while it paused"))
            s.flush()
            return _job_info(job)
        job.status, job.pause_requested, job.worker_id, job.heartbeat_at = "paused", False, None, None
        if point is not None:
            job.resume_point = point.to_json()
        _drop_unneeded_secrets(job)
        if point is not None and point.checkpoint_id is not None:
            message = f"Job paused after step {point.step} of {point.total_steps}; resume continues from its checkpoint"
            data: dict[str, Any] | None = {"step": point.step, "total_steps": point.total_steps}
        else:
            message, data = "Job paused before any checkpoint; resume trains from the start", None
        s.add(JobEvent(job_id=job_id, level="info", message=message, data=data))
        s.flush()
        return _job_info(job)


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
                select(Job.id, Job.attempts, Job.cancel_requested, Job.pause_requested, Job.worker_id).where(
                    Job.status == "running", Job.heartbeat_at < cutoff
                )
            )
        )
    touched: list[str] = []
    for job_id, attempts, cancel_requested, pause_requested, worker_id in stale:
        message = f"Worker {worker_id} stopped sending heartbeats for over {stale_after_s:g} s"
        if cancel_requested:
            values: dict[str, Any] = {"status": "cancelled", "finished_at": utcnow()}
            event, level = f"{message}; job cancelled as requested", "warn"
        elif pause_requested:
            # Resuming goes on from the last pause's checkpoint, if there was one.
            values = {"status": "paused", "pause_requested": False, "worker_id": None, "heartbeat_at": None}
            event, level = f"{message}; job paused as requested", "warn"
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
