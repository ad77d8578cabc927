"""OpenAI's fine-tuning jobs API (`/v1/fine_tuning/jobs`), plus Tailor's evaluation and report.

Bodies follow OpenAI's schema (FineTuningJob, FineTuningJobEvent, ...). The job's `metadata`
is the client's own pairs plus, under `tailor_` keys, what OpenAI has no field for (the
gate's decision, the version it made, a pause in progress); the evaluation is in full at
`GET /v1/fine_tuning/jobs/{id}/evaluation`. `pause` and `resume` are trainer.jobs'
(pause_job, resume_job); a checkpoint's `fine_tuned_model_checkpoint` is a model the tenant
can call (adapters.checkpoints). `integrations` (wandb) are accepted and not run: the job
says so in a warning event.

Tailor's names: `model` is the base model or one of the tenant's adapters (training then
starts from that adapter); the result is registered under `suffix` (or "ft-<job id prefix>")
and `fine_tuned_model` is the pinned `<name>@v<n>` the tenant can call at once.
Hyperparameters take OpenAI's names and "auto", plus Tailor's lora_rank, lora_alpha and
max_steps (see trainer.jobs).
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from starlette.responses import Response

from adapters import checkpoints, registry
from core.errors import bad_request, not_found
from core.metadata import filter_from_query
from core.quotas import Quotas
from core.states import JobStatus
from gateway import audit, tenants
from gateway.deps import AdminDep, CallerDep, ServicesDep
from gateway.services import Services
from trainer import distill, job_records, jobs
from trainer.distill import DistillSpec
from trainer.job_records import CheckpointInfo, EventInfo
from trainer.jobs import JobInfo

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
admin_router = APIRouter(prefix="/admin/tenants/{tenant}", tags=["admin"], dependencies=[AdminDep])

Auto = Literal["auto"]


# --- request ------------------------------------------------------------------------


class MethodConfigIn(BaseModel):
    hyperparameters: dict[str, Any] | None = None


class TeacherIn(BaseModel):
    model: str | None = Field(
        None, description="Without base_url: one of your adapters or the base model (default: the job's model)."
    )
    base_url: str | None = Field(
        None,
        description="An OpenAI-compatible endpoint on a public host, e.g. https://host/v1 (no query, fragment or "
        "user info; private addresses only where the operator allows the host).",
    )
    api_key: str | None = Field(None, description="Key for base_url; stored encrypted, dropped when the job ends.")
    api_key_env: str | None = Field(
        None, description="Or: a trainer host variable the operator allows (TAILOR_TEACHER_KEY_ENV_ALLOWLIST)."
    )


class DistillationIn(BaseModel):
    """Tailor: train on a teacher's answers to the training file's inputs (see trainer.distill)."""

    system: str | None = Field(None, description="The long system prompt the adapter learns to do without.")
    examples: list[dict[str, Any]] | None = Field(None, description="Few-shot turns (user, assistant, ...).")
    teacher: TeacherIn | None = None
    max_tokens: int | None = Field(None, description="Longest teacher answer, in tokens (default 256).")
    hyperparameters: dict[str, Any] | None = None


class ReinforcementIn(BaseModel):
    grader: dict[str, Any] | None = Field(
        None, description="Scores each sampled answer (trainer.rewards); a grader Tailor cannot run is a 400."
    )
    hyperparameters: dict[str, Any] | None = None


class MethodIn(BaseModel):
    type: Literal["supervised", "dpo", "kto", "reinforcement", "distillation"]
    supervised: MethodConfigIn | None = None
    dpo: MethodConfigIn | None = None
    kto: MethodConfigIn | None = Field(
        None, description="Tailor: KTO from answers rated good or bad (a training file of kind 'rated')."
    )
    reinforcement: ReinforcementIn | None = None
    distillation: DistillationIn | None = None


class IntegrationIn(BaseModel):
    """OpenAI's integration (Weights and Biases): accepted, never run (no data leaves Tailor)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["wandb"]
    wandb: dict[str, Any]


class CreateFineTuningJobIn(BaseModel):
    model: str = Field(min_length=1, max_length=200)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    hyperparameters: dict[str, Any] | None = Field(None, description="Deprecated: use method.")
    suffix: str | None = Field(None, min_length=1, max_length=64)
    seed: int | None = Field(None, ge=0, le=2_147_483_647)
    method: MethodIn | None = None
    integrations: list[IntegrationIn] | None = Field(
        None, max_length=16, description="Accepted and ignored: the job gets a warning event saying so."
    )
    metadata: dict[str, str] | None = Field(
        None,
        description="Up to 16 string pairs (keys up to 64 characters, values up to 512; `tailor_` keys are "
        "Tailor's); the list route filters on them with metadata[key]=value.",
    )


class TrainFromFeedbackIn(BaseModel):
    adapter_name: str = Field(min_length=1, max_length=64)
    method: Literal["supervised", "dpo", "kto"] = "supervised"
    hyperparameters: dict[str, Any] | None = None
    model: str | None = Field(None, description="Start from this model; default: the base model.")
    seed: int = Field(0, ge=0, le=2_147_483_647)


# --- responses ----------------------------------------------------------------------


class JobErrorOut(BaseModel):
    code: str
    message: str
    param: str | None = None


class HyperparametersOut(BaseModel):
    batch_size: int | Auto | None = "auto"
    learning_rate_multiplier: float | Auto = "auto"
    n_epochs: int | Auto = "auto"


class FineTuningJobOut(BaseModel):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    created_at: int
    error: JobErrorOut | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: HyperparametersOut
    model: str
    organization_id: str
    result_files: list[str]
    status: JobStatus
    trained_tokens: int | None
    # OpenAI's schema requires a string; a job trained from feedback has no file, so "".
    training_file: str
    validation_file: str | None
    integrations: list[dict[str, Any]] | None = None
    seed: int
    estimated_finish: int | None = None
    # {"type": "supervised", "supervised": {"hyperparameters": {...}}}: OpenAI's schema has
    # no null for the other methods' keys, so they are left out rather than set to None.
    # None (a KTO job, a type OpenAI's schema lacks): the key is left out; see `kto`.
    method: dict[str, Any] | None
    metadata: dict[str, str] | None
    kto: dict[str, Any] | None = Field(
        None, description="Tailor: a KTO job's method, {'hyperparameters': {...}} (it has no `method`)."
    )
    distillation: dict[str, Any] | None = Field(
        None,
        description="Tailor: a distillation job's teacher and context (never the key), and once trained "
        "its prompt tokens saved per request and agreement with the teacher.",
    )

    @model_serializer(mode="wrap")
    def _leave_out_missing_method(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("method") is None:
            out.pop("method", None)
        return out


class FineTuningJobListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobOut]
    has_more: bool


class JobEventOut(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any]


class JobEventListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventOut]
    has_more: bool


class CheckpointOut(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class CheckpointListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class EvaluationOut(BaseModel):
    object: Literal["fine_tuning.job.evaluation"] = "fine_tuning.job.evaluation"
    id: str
    fine_tuning_job_id: str | None
    candidate_version_id: str
    baseline_version_id: str | None = Field(description="None: compared with the base model.")
    dataset_id: str | None
    candidate: dict[str, Any]
    baseline: dict[str, Any]
    decision: str = Field(description="promoted | canary | candidate | rejected")
    reasons: list[str]
    report_url: str | None
    report_png_url: str | None
    created_at: int


# --- translation --------------------------------------------------------------------

_OPENAI_HP = ("batch_size", "learning_rate_multiplier", "n_epochs")
_EVENT_ID = re.compile(r"(?:ftevent-)?([0-9]{1,18})")


def _unix(value: Any) -> int | None:
    return None if value is None else int(value.timestamp())


def _metadata(job: JobInfo) -> dict[str, str]:
    # The client's metadata, and Tailor's extras (links to the rest) under keys the client
    # cannot use (trainer.jobs.RESERVED_METADATA_PREFIX).
    base = f"/v1/fine_tuning/jobs/{job.id}"
    resume = job.resume if job.status == JobStatus.PAUSED else None
    extras = {
        "tailor_adapter_name": job.adapter_name,
        "tailor_method": job.method if job.method not in ("supervised", "dpo", "reinforcement") else None,
        "tailor_source": job.source,
        "tailor_dataset_id": job.dataset_id,
        "tailor_decision": job.decision,
        "tailor_version_id": job.result_version_id,
        "tailor_attempts": str(job.attempts),
        "tailor_cancel_requested": "true" if job.cancel_requested and job.status == JobStatus.RUNNING else None,
        "tailor_pause_requested": "true" if job.pause_requested and job.status == JobStatus.RUNNING else None,
        "tailor_paused_at_step": str(resume.step) if resume and resume.checkpoint_id else None,
        "tailor_evaluation_url": f"{base}/evaluation" if job.decision else None,
        "tailor_report_url": f"{base}/report.png" if job.decision else None,
    }
    return {**(job.metadata or {}), **{k: v for k, v in extras.items() if v is not None}}


def job_out(job: JobInfo) -> FineTuningJobOut:
    hp = job.hyperparameters
    # Every knob (Tailor's extras too) under the method, OpenAI's three at the top level.
    # OpenAI's method types stop at supervised/dpo/reinforcement: a distillation job shows
    # as the supervised training it is, with the rest under `distillation`.
    openai_method = "supervised" if job.method == "distillation" else job.method
    method = None if job.method == "kto" else {"type": openai_method, openai_method: {"hyperparameters": dict(hp)}}
    if method is not None and job.method == "reinforcement":
        method["reinforcement"]["grader"] = (job.config or {}).get("grader")
    distillation = None
    if job.method == "distillation":
        distillation = DistillSpec.from_json(job.config or {}).public()
        results = (job.metrics or {}).get("distillation")
        if results:
            distillation["results"] = results
    error = None
    if job.error:
        error = JobErrorOut(
            code=str(job.error.get("code") or "error"),
            message=str(job.error.get("message") or ""),
            param=job.error.get("param"),
        )
    return FineTuningJobOut(
        id=job.id,
        created_at=_unix(job.created_at) or 0,
        error=error,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=_unix(job.finished_at),
        hyperparameters=HyperparametersOut(**{k: hp[k] for k in _OPENAI_HP if k in hp}),
        model=job.model,
        organization_id=job.tenant_id,
        result_files=[],
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file or "",
        validation_file=job.validation_file,
        seed=job.seed,
        method=method,
        metadata=_metadata(job),
        distillation=distillation,
        kto={"hyperparameters": dict(hp)} if job.method == "kto" else None,
    )


def event_out(e: EventInfo) -> JobEventOut:
    return JobEventOut(
        id=f"ftevent-{e.id}",
        created_at=_unix(e.created_at) or 0,
        level=e.level,  # type: ignore[arg-type]
        message=e.message,
        type=e.type,
        data=e.data or {},
    )  # type: ignore[arg-type]


def checkpoint_out(c: CheckpointInfo, adapter_name: str) -> CheckpointOut:
    metrics = {k: float(v) for k, v in c.metrics.items() if isinstance(v, (int, float))}
    return CheckpointOut(
        id=c.id,
        created_at=_unix(c.created_at) or 0,
        fine_tuned_model_checkpoint=checkpoints.checkpoint_model(adapter_name, c.job_id, c.step),
        fine_tuning_job_id=c.job_id,
        metrics=metrics,
        step_number=c.step,
    )


def _method_and_hyperparameters(body: CreateFineTuningJobIn) -> tuple[str, dict[str, Any]]:
    method = body.method.type if body.method else "supervised"
    # The deprecated top-level hyperparameters, overridden by the method's own.
    hp = dict(body.hyperparameters or {})
    config = getattr(body.method, method, None) if body.method else None
    if config is not None and config.hyperparameters:
        hp.update(config.hyperparameters)
    return method, hp


def _trainable(services: Services, tenant_id: str, model: str, param: str) -> None:
    """`model` is one the tenant may train from (or ask as a teacher): 404 for names not the
    tenant's; a job's checkpoint is a 400 (it is served, not trained from: use the job's
    fine_tuned_model)."""
    base = services.settings.base_model_name
    if model == base:
        return
    registry.resolve(services.db, tenant_id, model, base)
    if checkpoints.parse(model) is not None:
        raise bad_request(
            f"{model!r} is a checkpoint of a fine-tuning job: call it, or train from an adapter or version "
            "(the job's fine_tuned_model) instead.",
            code="invalid_model",
            param=param,
        )


def create(services: Services, tenant_id: str, body: CreateFineTuningJobIn, *, actor: str) -> JobInfo:
    method, hp = _method_and_hyperparameters(body)
    base = services.settings.base_model_name
    _trainable(services, tenant_id, body.model, "model")
    if body.suffix == base:
        raise bad_request(f"suffix {body.suffix!r} is the base model's name.", param="suffix")
    config = None
    if method == "distillation":
        config = _distillation_config(services, tenant_id, body)
    elif method == "reinforcement":
        given = body.method.reinforcement if body.method else None
        config = {"grader": given.grader if given else None}  # checked by jobs.submit
    return jobs.submit(
        services.db,
        tenant_id,
        actor=actor,
        method=method,
        model=body.model,
        adapter_name=body.suffix,
        training_file=body.training_file,
        validation_file=body.validation_file,
        hyperparameters=hp,
        # OpenAI: "If a seed is not specified, one will be generated for you."
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        suffix=body.suffix,
        source="api",
        max_lora_rank=services.settings.engine_max_lora_rank,
        quotas=Quotas.from_settings(services.settings),
        config=config,
        metadata=body.metadata,
        integrations=[i.type for i in body.integrations or ()],
    )


def _distillation_config(services: Services, tenant_id: str, body: CreateFineTuningJobIn) -> dict[str, Any]:
    given = body.method.distillation if body.method else None
    if given is None:
        raise bad_request("method.distillation is required for the distillation method.", param="method.distillation")
    spec = distill.parse_spec(given.model_dump(exclude_none=True), services.settings)
    teacher = spec.teacher
    if not teacher.remote and teacher.model is not None:
        # 404 (or 400) now, not a failed job later
        _trainable(services, tenant_id, teacher.model, "method.distillation.teacher.model")
    return spec.to_json()


def _event_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    match = _EVENT_ID.fullmatch(after)
    if match is None:
        raise bad_request(f"after must be an event id such as 'ftevent-12', got {after!r}.", param="after")
    return int(match.group(1))


def report_bytes(services: Services, tenant_id: str, job_id: str, name: str) -> bytes:
    evaluation = job_records.get_evaluation(services.db, tenant_id, job_id)
    if evaluation.report_key is None:
        raise not_found(f"Fine-tuning job {job_id} has no report.", code="report_not_found")
    return services.blobs.get_bytes(evaluation.report_key.rsplit("/", 1)[0] + "/" + name)


# --- tenant routes ------------------------------------------------------------------


@router.post("", response_model=FineTuningJobOut, summary="Create a fine-tuning job (queued for a trainer worker)")
def create_job(body: CreateFineTuningJobIn, services: ServicesDep, caller: CallerDep) -> FineTuningJobOut:
    return job_out(create(services, caller.tenant_id, body, actor=audit.actor_for_key(caller.key_id)))


@router.get(
    "",
    response_model=FineTuningJobListOut,
    summary="List your fine-tuning jobs, newest first; filter with metadata[key]=value (or metadata=null)",
)
def list_jobs(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> FineTuningJobListOut:
    query = request.query_params
    page, has_more = jobs.list_jobs(
        services.db,
        caller.tenant_id,
        after=after,
        limit=limit,
        metadata=filter_from_query(query.multi_items()),
        without_metadata=_without_metadata(query.getlist("metadata")),
    )
    return FineTuningJobListOut(data=[job_out(j) for j in page], has_more=has_more)


def _without_metadata(values: list[str]) -> bool:
    """OpenAI's `metadata=null`: only jobs created without metadata."""
    if not values:
        return False
    if values != ["null"]:
        raise bad_request(
            "Filter by metadata with metadata[key]=value, or send metadata=null for jobs without metadata.",
            code="invalid_value",
            param="metadata",
        )
    return True


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJobOut)
def get_job(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> FineTuningJobOut:
    return job_out(jobs.get_job(services.db, caller.tenant_id, fine_tuning_job_id))


@router.post(
    "/{fine_tuning_job_id}/cancel",
    response_model=FineTuningJobOut,
    summary="Cancel: a queued job at once, a running one at its next training step",
)
def cancel_job(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> FineTuningJobOut:
    actor = audit.actor_for_key(caller.key_id)
    return job_out(jobs.cancel_job(services.db, caller.tenant_id, fine_tuning_job_id, actor=actor))


@router.post(
    "/{fine_tuning_job_id}/pause",
    response_model=FineTuningJobOut,
    summary="Pause a running job: it saves a checkpoint at its next training step, then frees its worker",
)
def pause_job(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> FineTuningJobOut:
    actor = audit.actor_for_key(caller.key_id)
    return job_out(jobs.pause_job(services.db, caller.tenant_id, fine_tuning_job_id, actor=actor))


@router.post(
    "/{fine_tuning_job_id}/resume",
    response_model=FineTuningJobOut,
    summary="Resume a paused job: queued again, it trains its remaining steps from its last checkpoint",
)
def resume_job(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> FineTuningJobOut:
    quotas = Quotas.from_settings(services.settings)
    actor = audit.actor_for_key(caller.key_id)
    return job_out(jobs.resume_job(services.db, caller.tenant_id, fine_tuning_job_id, actor=actor, quotas=quotas))


@router.get("/{fine_tuning_job_id}/events", response_model=JobEventListOut, summary="A job's events, newest first")
def list_events(
    fine_tuning_job_id: str,
    services: ServicesDep,
    caller: CallerDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> JobEventListOut:
    page, has_more = job_records.list_events(
        services.db, caller.tenant_id, fine_tuning_job_id, after=_event_cursor(after), limit=limit
    )
    return JobEventListOut(data=[event_out(e) for e in page], has_more=has_more)


@router.get(
    "/{fine_tuning_job_id}/checkpoints",
    response_model=CheckpointListOut,
    summary="A job's checkpoints, latest step first",
)
def list_checkpoints(
    fine_tuning_job_id: str,
    services: ServicesDep,
    caller: CallerDep,
    after: str | None = None,
    limit: int = Query(10, ge=1, le=100),
) -> CheckpointListOut:
    job = jobs.get_job(services.db, caller.tenant_id, fine_tuning_job_id)
    page, has_more = job_records.list_checkpoints(services.db, caller.tenant_id, job.id, after=after, limit=limit)
    data = [checkpoint_out(c, job.adapter_name) for c in page]
    return CheckpointListOut(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=has_more
    )


@router.get(
    "/{fine_tuning_job_id}/evaluation",
    response_model=EvaluationOut,
    summary="Tailor: the candidate's held-out metrics against the version it would replace",
)
def get_evaluation(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> EvaluationOut:
    e = job_records.get_evaluation(services.db, caller.tenant_id, fine_tuning_job_id)
    base = f"/v1/fine_tuning/jobs/{fine_tuning_job_id}"
    return EvaluationOut(
        id=e.id,
        fine_tuning_job_id=e.job_id,
        candidate_version_id=e.candidate_version_id,
        baseline_version_id=e.baseline_version_id,
        dataset_id=e.dataset_id,
        candidate=e.candidate_metrics,
        baseline=e.baseline_metrics,
        decision=e.decision,
        reasons=e.reasons,
        report_url=f"{base}/report.json" if e.report_key else None,
        report_png_url=f"{base}/report.png" if e.report_key else None,
        created_at=_unix(e.created_at) or 0,
    )


@router.get("/{fine_tuning_job_id}/report.json", summary="Tailor: the job's evaluation report")
def get_report_json(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> Response:
    data = report_bytes(services, caller.tenant_id, fine_tuning_job_id, "report.json")
    return Response(content=data, media_type="application/json")


@router.get("/{fine_tuning_job_id}/report.png", summary="Tailor: the job's training-loss plot")
def get_report_png(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> Response:
    data = report_bytes(services, caller.tenant_id, fine_tuning_job_id, "loss.png")
    return Response(content=data, media_type="image/png")


# --- operator route -----------------------------------------------------------------


@admin_router.post(
    "/train", response_model=FineTuningJobOut, status_code=201, summary="Queue a training job on the tenant's feedback"
)
def train_from_feedback(tenant: str, body: TrainFromFeedbackIn, services: ServicesDep) -> FineTuningJobOut:
    owner = tenants.find_tenant(services.db, tenant)
    base = services.settings.base_model_name
    model = body.model or base
    _trainable(services, owner.id, model, "model")
    if body.adapter_name == base:
        raise bad_request(f"adapter_name {body.adapter_name!r} is the base model's name.", param="adapter_name")
    # Snapshot now, so "no usable feedback" is this request's 400 rather than a failed job.
    snapshot = jobs.feedback_snapshot(services.db, services.blobs, owner.id, body.adapter_name)
    jobs.training_examples(snapshot, body.method)
    job = jobs.submit(
        services.db,
        owner.id,
        actor=audit.ADMIN,
        method=body.method,
        model=model,
        adapter_name=body.adapter_name,
        hyperparameters=body.hyperparameters,
        seed=body.seed,
        source="feedback",
        dataset_id=snapshot.id,
        max_lora_rank=services.settings.engine_max_lora_rank,
        quotas=Quotas.from_settings(services.settings),
    )
    return job_out(job)
