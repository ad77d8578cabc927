"""Fine-tuning jobs in the database: submit, read, list, cancel, pause and resume them.

Each action (`submit`, `cancel_job`, `pause_job`, `resume_job`) takes who acts (`actor`,
core.audit) and appends its audit event in its own transaction: the routes, the console,
the CLI and the worker's retraining policy all call these, and none records after the fact.

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

Claiming, heartbeats, finishing and recovering a dead worker's job, and why two workers
never share a job: trainer.job_queue. Events, checkpoints and evaluations: trainer.job_records.
Each tenant may have at most `max_queued_jobs` waiting (core.quotas).

Hyperparameters (OpenAI's names, "auto", and Tailor's extras) are trainer.hyperparameters'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from adapters import promotion
from adapters.validation import validate_adapter_name
from core import audit
from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError, bad_request, conflict, not_found
from core.ids import new_id, utcnow
from core.metadata import check_metadata, has_pair
from core.models import Job, JobEvent
from core.pages import tenant_page
from core.quotas import Quotas, Usage, operator_quotas, reserve
from core.rows import from_row
from core.states import TERMINAL_JOB_STATUSES, WAITING_JOB_STATUSES, JobStatus
from trainer import datasets, files, hyperparameters, rewards
from trainer.datasets import Snapshot
from trainer.hyperparameters import ignored as ignored_knobs

# distillation trains like supervised, on a teacher's answers (trainer.distill);
# reinforcement samples answers and learns from its grader's scores (trainer.compute.grpo).
REINFORCEMENT = hyperparameters.REINFORCEMENT
METHODS = ("supervised", "dpo", "kto", "distillation", REINFORCEMENT)
SFT_METHODS = hyperparameters.SFT_METHODS
# `metadata` keys that start so are Tailor's own, shown beside the client's on the job.
RESERVED_METADATA_PREFIX = "tailor_"

# Which file kind (core.models.StoredFile.kind) each method trains on.
FILE_KIND = {
    "supervised": "sft",
    "dpo": "preference",
    "kto": "rated",
    "distillation": "prompts",
    "reinforcement": "prompts",
}


# -----------------------------------------------------------------------------
# values handed out


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
    elif method == REINFORCEMENT:
        n, what = len(snapshot.train_prompts), "prompts"
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


def describe_job(job: JobInfo) -> dict[str, Any]:
    """A job as its `job.create` audit event shows it."""
    # Not the job's config: a distillation config may hold a sealed teacher key.
    return {
        "id": job.id,
        "method": job.method,
        "model": job.model,
        "adapter_name": job.adapter_name,
        "training_file": job.training_file,
        "dataset_id": job.dataset_id,
        "hyperparameters": job.hyperparameters,
        "source": job.source,
    }


def submit(
    db: Database,
    tenant_id: str,
    *,
    actor: str,
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
    """Queue a fine-tuning job, recording `job.create` by `actor` (core.audit) in the same
    transaction. Without `adapter_name` the result is named "ft-<short job id>".

    Files must be the tenant's own fine-tune uploads of the kind the method needs; with no
    training file and no dataset_id the worker builds the dataset from the tenant's feedback.
    A tenant with `max_queued_jobs` jobs waiting gets a 429 (`quotas`: the operator's
    defaults; None: the process's settings). `metadata`: the client's OpenAI metadata.
    `integrations`: the types of the integrations the client asked for (e.g. "wandb"), which
    Tailor does not run: the job says so in a warning event, and trains all the same.
    """
    hp = validate_hyperparameters(method, hyperparameters, max_lora_rank=max_lora_rank)
    if method == REINFORCEMENT:
        # A grader Tailor cannot run is a 400 now, not a failed job later.
        config = {"grader": rewards.check_grader((config or {}).get("grader"))}
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
            status=JobStatus.QUEUED,
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
        if ignored := ignored_knobs(hp):
            s.add(
                JobEvent(
                    job_id=job_id,
                    level="warn",
                    message=f"Hyperparameters accepted and ignored: {', '.join(ignored)} (Tailor evaluates the "
                    "result on the validation file with the grader after training, and its base models take "
                    "no reasoning budget)",
                    data={"ignored_hyperparameters": ignored},
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
        info = job_info(job)
        audit.record(s, actor=actor, action="job.create", tenant_id=tenant_id, target=job_id, after=describe_job(info))
        return info


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


def owned_job(s: Any, tenant_id: str | None, job_id: str) -> Job:
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
        return job_info(owned_job(s, tenant_id, job_id))


def check_page_limit(limit: int) -> None:
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
    check_page_limit(limit)
    if metadata and without_metadata:
        raise bad_request("Filter by metadata pairs or by metadata=null, not both.", param="metadata")
    with db.session() as s:
        where = [Job.user_metadata.is_(None)] if without_metadata else []
        dialect = s.get_bind().dialect.name
        where += [has_pair(Job.user_metadata, dialect, key, value) for key, value in sorted((metadata or {}).items())]
        unknown = f"No fine-tuning job {after!r} to list after."
        page = tenant_page(s, Job, tenant_id, where=where, after=after, unknown=unknown, limit=limit)
        return [job_info(j) for j in page.items], page.has_more


def _cancelled(job: JobInfo) -> dict[str, Any]:
    return {"status": job.status, "cancel_requested": job.cancel_requested}


def _paused(job: JobInfo) -> dict[str, Any]:
    return {"status": job.status, "pause_requested": job.pause_requested}


def _resumed(job: JobInfo) -> dict[str, Any]:
    point = job.resume
    return {"status": job.status, "resume_step": point.step if point and point.checkpoint_id else None}


def _record(s: Any, actor: str, action: str, job: Job, describe: Callable[[JobInfo], dict[str, Any]]) -> JobInfo:
    """The job as it is now, with `action` by `actor` (`describe`d after it) appended to the audit log in `s`."""
    s.flush()
    info = job_info(job)
    audit.record(s, actor=actor, action=action, tenant_id=info.tenant_id, target=info.id, after=describe(info))
    return info


def cancel_job(db: Database, tenant_id: str | None, job_id: str, *, actor: str) -> JobInfo:
    """Queued: cancelled at once. Running: flagged; the worker stops before its next step.

    Cancelling a cancelled job is a no-op; a finished one is a 409. Either way that did not
    fail is recorded as `job.cancel` by `actor`.
    """
    with db.session() as s:
        job = owned_job(s, tenant_id, job_id)
        if job.status == JobStatus.CANCELLED:
            return _record(s, actor, "job.cancel", job, _cancelled)
        if job.status in TERMINAL_JOB_STATUSES:
            raise conflict(
                f"Fine-tuning job {job_id} has already {job.status}; it cannot be cancelled.", code="job_finished"
            )
        if job.status == JobStatus.RUNNING:
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
            job.status, job.finished_at, job.cancel_requested = JobStatus.CANCELLED, utcnow(), True
            drop_unneeded_secrets(job)
            s.add(JobEvent(job_id=job_id, level="info", message="Job cancelled"))
        return _record(s, actor, "job.cancel", job, _cancelled)


def pause_job(db: Database, tenant_id: str | None, job_id: str, *, actor: str) -> JobInfo:
    """Ask a running job to pause: its training saves a checkpoint at the next step and stops,
    and the job becomes `paused` (see mark_paused). Asking again while it runs is a no-op;
    a job that is not running (or is being cancelled) is a 400. Recorded as `job.pause` by `actor`.
    """
    with db.session() as s:
        job = owned_job(s, tenant_id, job_id)
        if job.status != JobStatus.RUNNING:
            now = "is already paused" if job.status == JobStatus.PAUSED else f"is {job.status.replace('_', ' ')}"
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
        return _record(s, actor, "job.pause", job, _paused)


def resume_job(
    db: Database, tenant_id: str | None, job_id: str, *, actor: str, quotas: Quotas | None = None
) -> JobInfo:
    """Queue a paused job again; a worker continues it from its resume point. A job that is
    not paused is a 400; resuming takes a place in the tenant's queue (429 when it is full).
    Recorded as `job.resume` by `actor`."""
    with db.session() as s:
        job = owned_job(s, tenant_id, job_id)
        if job.status != JobStatus.PAUSED:
            raise bad_request(
                f"Fine-tuning job {job_id} is {job.status.replace('_', ' ')}, not paused; only a paused job "
                "can be resumed.",
                code="job_not_paused",
            )
        reserve(s, job.tenant_id, operator_quotas(quotas), Usage(queued_jobs=1))
        # The pause ended its attempt cleanly: the tries left for crashes start again.
        job.status, job.pause_requested, job.attempts = JobStatus.QUEUED, False, 0
        job.worker_id, job.heartbeat_at = None, None
        point = ResumePoint.from_json(job.resume_point) if job.resume_point else None
        if point is not None and point.checkpoint_id is not None:
            message = f"Job resumed; queued to continue from step {point.step} of {point.total_steps}"
        else:
            message = "Job resumed; queued to train from the start (it paused before saving a checkpoint)"
        s.add(JobEvent(job_id=job_id, level="info", message=message))
        return _record(s, actor, "job.resume", job, _resumed)


def drop_unneeded_secrets(job: Job | None) -> None:
    """Drop a job's sealed teacher key once nothing can use it: called in the transaction of
    every transition, so the key never outlives its use by a commit.

    The key is used only to ask the teacher, which a job does once, while it waits or runs
    and has no dataset yet; an ended job, or one whose answers are in its snapshot, is done
    with it.
    """
    if job is None or (job.status in (*WAITING_JOB_STATUSES, JobStatus.RUNNING) and job.dataset_id is None):
        return
    teacher = (job.config or {}).get("teacher")
    if isinstance(teacher, dict) and teacher.get("api_key_sealed"):
        job.config = {**(job.config or {}), "teacher": {**teacher, "api_key_sealed": None}}
