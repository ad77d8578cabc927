"""OpenAI's fine-tuning jobs API (`/v1/fine_tuning/jobs`), plus Tailor's evaluation and report.

Bodies follow OpenAI's schema (FineTuningJob, FineTuningJobEvent, ...; gateway.protocol.fine_tuning).
The job's `metadata` is the client's own pairs plus, under `tailor_` keys, what OpenAI has no
field for (the gate's decision, the version it made, a pause in progress); the evaluation is
in full at `GET /v1/fine_tuning/jobs/{id}/evaluation`. `pause` and `resume` are trainer.jobs'
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
from collections.abc import Callable
from typing import Any

import anyio.from_thread
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from adapters import checkpoints, promotion, registry
from core.errors import TailorError, bad_request, not_found
from core.metadata import filter_from_query
from core.quotas import Quotas
from core.states import FinetuningType, VersionKind
from gateway import audit, tenants
from gateway.deps import AdminDep, CallerDep, ServicesDep
from gateway.protocol.fine_tuning import (
    EVENT_ID_PREFIX,
    CheckpointListOut,
    CreateFineTuningJobIn,
    EvaluationOut,
    FineTuningJobListOut,
    FineTuningJobOut,
    JobEventListOut,
    JobEventOut,
    TrainFromFeedbackIn,
    checkpoint_out,
    evaluation_out,
    job_out,
)
from gateway.protocol.wire import page_ids
from gateway.services import Services
from gateway.tenants import Caller
from trainer import distill, hyperparameters, job_base, job_records, jobs, rewards, selection
from trainer.graders import Capabilities, ExternalModels
from trainer.jobs import JobInfo
from trainer.selection import CANDIDATES_KEY

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
admin_router = APIRouter(prefix="/admin/tenants/{tenant}", tags=["admin"], dependencies=[AdminDep])

_EVENT_ID = re.compile(rf"(?:{EVENT_ID_PREFIX})?([0-9]{{1,18}})")


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
    if services.settings.base(model) is not None:
        return
    registry.resolve(services.db, tenant_id, model, services.settings.base_model_name)
    if checkpoints.parse(model) is not None:
        raise bad_request(
            f"{model!r} is a checkpoint of a fine-tuning job: call it, or train from an adapter or version "
            "(the job's fine_tuned_model) instead.",
            code="invalid_model",
            param=param,
        )


def _candidates(
    services: Services, tenant_id: str, body: CreateFineTuningJobIn, *, method: str, hp: dict[str, Any]
) -> list[str]:
    """A selection job's candidate bases (trainer.selection), each also one the adapter its result
    is registered under may run on: 400 naming `candidate_models` (or `suffix`) otherwise."""
    full = hp.get("finetuning_type") == FinetuningType.FULL
    bases = selection.check_candidates(
        services.settings, body.candidate_models, model=body.model, method=method, full=full
    )
    current = promotion.active_version(services.db, tenant_id, body.suffix) if body.suffix else None
    for base in bases if current is not None else ():
        job_base.check_same_base(services.settings, base, current.base_model, f"{body.suffix!r}")
    return [b.name for b in bases]


def _on_default_base(services: Services, tenant_id: str, model: str, param: str) -> None:
    """A local distillation teacher runs on the default base, as its student does: 400 for
    another base or an adapter registered for one."""
    other = job_base.requested_base(services.settings, services.db, tenant_id, model)
    if not other.default:
        raise bad_request(
            f"{model!r} runs on base model {other.name!r}; distillation trains on the default base model "
            f"{services.settings.base_model_name!r} and its adapters only.",
            code="unsupported_base_model",
            param=param,
        )


def _same_kind(services: Services, tenant_id: str, model: str, given: dict[str, Any]) -> None:
    """A full fine-tune continues a whole model and a LoRA an adapter: 400 for the other kind
    (the worker checks again: a name can be moved to a version of the other kind meanwhile)."""
    base = services.settings.base_model_name
    if services.settings.base(model) is not None:
        return
    whole = registry.resolve(services.db, tenant_id, model, base).kind == VersionKind.MODEL
    hyperparameters.check_start(model, whole=whole, full=given.get("finetuning_type") == FinetuningType.FULL)


def _grader_models(services: Services, tenant_id: str, grader: Any, capabilities: Capabilities) -> None:
    """Each model the grader's model graders name is an operator's grader model open to the
    tenant, or the tenant's base model or adapter: a 400 naming it otherwise (the worker checks
    again, before training: a name can go meanwhile)."""
    checked = rewards.check_grader(grader, capabilities)
    external = ExternalModels.from_settings(services.settings, tenant_id)
    base = services.settings.base_model_name
    for name in sorted(rewards.model_names(checked)):
        if external.handles(name) or name == base:
            continue
        try:
            kind = registry.resolve(services.db, tenant_id, name, base).kind
        except TailorError:
            kind = None
        if kind != VersionKind.ADAPTER:
            raise bad_request(
                f"The grader's model {name!r} is neither one of your adapters nor a grader model this server offers.",
                code="invalid_grader",
                param=f"{rewards.PARAM}.model",
            )


def create(services: Services, tenant_id: str, body: CreateFineTuningJobIn, *, actor: str) -> JobInfo:
    method, hp = _method_and_hyperparameters(body)
    base = services.settings.base_model_name
    _trainable(services, tenant_id, body.model, "model")
    if body.suffix is not None and services.settings.base(body.suffix) is not None:
        raise bad_request(f"suffix {body.suffix!r} is the base model's name.", param="suffix")
    full = hp.get("finetuning_type") == FinetuningType.FULL
    trains_on = job_base.training_base(
        services.settings, services.db, tenant_id, body.model, method=method, full=full, adapter_name=body.suffix
    )
    _same_kind(services, tenant_id, body.model, hp)
    config, capabilities = None, Capabilities()
    if body.candidate_models is not None:
        config = {CANDIDATES_KEY: _candidates(services, tenant_id, body, method=method, hp=hp)}
    if method == "distillation":
        config = _distillation_config(services, tenant_id, body)
        if config.get("student"):
            hp = _student_hyperparameters(base, body.model, hp)
    elif method == "reinforcement":
        given = body.method.reinforcement if body.method else None
        config = {"grader": given.grader if given else None}  # checked by jobs.submit
        # What the grader routes check it against (a sync route: on a thread of the event loop's).
        capabilities = anyio.from_thread.run(services.graders.capabilities)
        _grader_models(services, tenant_id, config["grader"], capabilities)
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
        config=job_base.job_config(trains_on, config),
        metadata=body.metadata,
        integrations=[i.type for i in body.integrations or ()],
        grader_capabilities=capabilities,
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
        _on_default_base(services, tenant_id, teacher.model, "method.distillation.teacher.model")
    return spec.to_json()


def _student_hyperparameters(base: str, model: str, hp: dict[str, Any]) -> dict[str, Any]:
    """A smaller student is derived from the base model and trains whole (trainer.distill.student)."""
    if model != base:
        raise bad_request(
            f"A smaller student is derived from the base model: model must be {base!r}.",
            param="model",
        )
    return distill.student_hyperparameters(hp)


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


def _control(
    action: Callable[..., JobInfo], services: Services, caller: Caller, job_id: str, **extra: Any
) -> FineTuningJobOut:
    """Cancel, pause or resume one of the caller's jobs, in its key's name."""
    return job_out(action(services.db, caller.tenant_id, job_id, actor=audit.actor_for_key(caller.key_id), **extra))


@router.post(
    "/{fine_tuning_job_id}/cancel",
    response_model=FineTuningJobOut,
    summary="Cancel: a queued job at once, a running one at its next training step",
)
def cancel_job(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> FineTuningJobOut:
    return _control(jobs.cancel_job, services, caller, fine_tuning_job_id)


@router.post(
    "/{fine_tuning_job_id}/pause",
    response_model=FineTuningJobOut,
    summary="Pause a running job: it saves a checkpoint at its next training step, then frees its worker",
)
def pause_job(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> FineTuningJobOut:
    return _control(jobs.pause_job, services, caller, fine_tuning_job_id)


@router.post(
    "/{fine_tuning_job_id}/resume",
    response_model=FineTuningJobOut,
    summary="Resume a paused job: queued again, it trains its remaining steps from its last checkpoint",
)
def resume_job(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> FineTuningJobOut:
    quotas = Quotas.from_settings(services.settings)
    return _control(jobs.resume_job, services, caller, fine_tuning_job_id, quotas=quotas)


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
    return JobEventListOut(data=[JobEventOut.model_validate(e) for e in page], has_more=has_more)


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
    return CheckpointListOut(data=data, **page_ids(data), has_more=has_more)


@router.get(
    "/{fine_tuning_job_id}/evaluation",
    response_model=EvaluationOut,
    summary="Tailor: the candidate's held-out metrics against the version it would replace",
)
def get_evaluation(fine_tuning_job_id: str, services: ServicesDep, caller: CallerDep) -> EvaluationOut:
    return evaluation_out(job_records.get_evaluation(services.db, caller.tenant_id, fine_tuning_job_id))


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
    if body.model is not None:
        _trainable(services, owner.id, body.model, "model")
    job = jobs.submit_from_feedback(
        services.db,
        services.blobs,
        services.settings,
        owner.id,
        body.adapter_name,
        actor=audit.ADMIN,
        method=body.method,
        model=body.model,
        hyperparameters=body.hyperparameters,
        seed=body.seed,
    )
    return job_out(job)
