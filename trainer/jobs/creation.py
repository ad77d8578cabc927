"""Creating a job: `submit` checks what it names and queues it, recording `job.create`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adapters.validation import validate_adapter_name
from core import audit
from core.db import Database
from core.errors import TailorError, bad_request
from core.ids import new_id
from core.metadata import check_metadata
from core.models import Job, JobEvent
from core.quotas import Quotas, Usage, operator_quotas, reserve
from core.states import JobStatus
from trainer import files, hyperparameters, rewards
from trainer.graders import Capabilities
from trainer.hyperparameters import ignored as ignored_knobs
from trainer.jobs.info import JobInfo, job_info
from trainer.jobs.methods import FILE_KIND, REINFORCEMENT, validate_hyperparameters

# `metadata` keys that start so are Tailor's own, shown beside the client's on the job.
RESERVED_METADATA_PREFIX = "tailor_"


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
    grader_capabilities: Capabilities = Capabilities(),
) -> JobInfo:
    """Queue a fine-tuning job, recording `job.create` by `actor` (core.audit) in the same
    transaction. Without `adapter_name` the result is named "ft-<short job id>".

    Files must be the tenant's own fine-tune uploads of the kind the method needs; with no
    training file and no dataset_id the worker builds the dataset from the tenant's feedback.
    A tenant with `max_queued_jobs` jobs waiting gets a 429 (`quotas`: the operator's
    defaults; None: the process's settings). `metadata`: the client's OpenAI metadata.
    `integrations`: the types of the integrations the client asked for (e.g. "wandb"), which
    Tailor does not run: the job says so in a warning event, and trains all the same.
    `grader_capabilities`: what graders this server runs (a reinforcement job's grader is
    checked as /v1/fine_tuning/alpha/graders/validate checks it; Python graders only if enabled).
    """
    hp = validate_hyperparameters(method, hyperparameters, max_lora_rank=max_lora_rank)
    if method == REINFORCEMENT:
        # A grader Tailor cannot run is a 400 now, not a failed job later.
        config = {"grader": rewards.check_grader((config or {}).get("grader"), grader_capabilities)}
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
