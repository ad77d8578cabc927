"""OpenAI's fine-tuning objects (FineTuningJob, FineTuningJobEvent, FineTuningJobCheckpoint),
the bodies that create jobs, and Tailor's evaluation; built from trainer.jobs' and
trainer.job_records' dataclasses. What `metadata` carries besides the client's pairs is
described in gateway.routes.fine_tuning.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from adapters import checkpoints
from core.states import JobStatus
from gateway.protocol.wire import ListPage, UnixTime, WireModel, attributes, unix_seconds
from trainer.distill import DistillSpec
from trainer.job_records import CheckpointInfo, EvaluationInfo
from trainer.jobs import JobInfo
from trainer.selection import CANDIDATES_KEY

Auto = Literal["auto"]
EVENT_ID_PREFIX = "ftevent-"


def event_id(value: Any) -> Any:
    """An event's row id as OpenAI's event id ("ftevent-12")."""
    return f"{EVENT_ID_PREFIX}{value}" if isinstance(value, int) else value


def _empty_when_none(data: Any) -> Any:
    return {} if data is None else data


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


class StudentIn(BaseModel):
    """Tailor: a smaller student (trainer.distill.student)."""

    model_config = ConfigDict(extra="forbid")
    # Any: trainer.distill.student checks it and names the field in its 400.
    layers: Any = Field(
        description="The teacher's base model's decoder layers the student keeps: every-other, first:N, "
        "spread:N, or ascending indices such as [0, 2, 5].",
        json_schema_extra={"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}]},
    )


class DistillationIn(BaseModel):
    """Tailor: train on a teacher's answers to the training file's inputs (see trainer.distill)."""

    system: str | None = Field(None, description="The long system prompt the adapter learns to do without.")
    examples: list[dict[str, Any]] | None = Field(None, description="Few-shot turns (user, assistant, ...).")
    teacher: TeacherIn | None = None
    max_tokens: int | None = Field(None, description="Longest teacher answer, in tokens (default 256).")
    student: StudentIn | None = Field(
        None,
        description="A smaller student: the base model with only these layers, all of its weights trained; "
        "the result is a whole model served on an engine of its own. Default: an adapter on the job's model.",
    )
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
    candidate_models: list[str] | None = Field(
        None,
        max_length=16,
        description="Tailor: 2 to 4 configured base model names, `model` among them (supervised, dpo and kto "
        "LoRA jobs): one adapter is trained and evaluated per base, and the gate keeps the best (the cheaper "
        "per 1K requests when within its tolerance); the job's report.json compares them.",
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
    candidate_models: list[str] | None = Field(
        None,
        description="Tailor: the base models a selection job trains a candidate on (its report.json compares "
        "them; the result, fine_tuned_model, runs on the chosen one).",
    )

    @model_serializer(mode="wrap")
    def _leave_out_missing_method(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("method") is None:
            out.pop("method", None)
        return out


class FineTuningJobListOut(ListPage[FineTuningJobOut]):
    pass


# model_validate(trainer.job_records.EventInfo)
class JobEventOut(WireModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: Annotated[str, BeforeValidator(event_id)]
    created_at: UnixTime
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: Annotated[dict[str, Any], BeforeValidator(_empty_when_none)]


class JobEventListOut(ListPage[JobEventOut]):
    pass


class CheckpointOut(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: UnixTime
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
    created_at: UnixTime


# --- translation --------------------------------------------------------------------

_OPENAI_HP = ("batch_size", "learning_rate_multiplier", "n_epochs")


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
        created_at=unix_seconds(job.created_at),
        error=error,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=unix_seconds(job.finished_at) if job.finished_at else None,
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
        candidate_models=(job.config or {}).get(CANDIDATES_KEY),
    )


def checkpoint_out(c: CheckpointInfo, adapter_name: str) -> CheckpointOut:
    """`c` under OpenAI's names, with the model name that calls it."""
    return CheckpointOut.model_validate(
        {
            **attributes(c),
            "fine_tuned_model_checkpoint": checkpoints.checkpoint_model(adapter_name, c.job_id, c.step),
            "fine_tuning_job_id": c.job_id,
            "metrics": {k: float(v) for k, v in c.metrics.items() if isinstance(v, (int, float))},
            "step_number": c.step,
        }
    )


def evaluation_out(e: EvaluationInfo) -> EvaluationOut:
    """The evaluation of job `e.job_id`, with the links to its report."""
    base = f"/v1/fine_tuning/jobs/{e.job_id}"
    return EvaluationOut.model_validate(
        {
            **attributes(e),
            "fine_tuning_job_id": e.job_id,
            "candidate": e.candidate_metrics,
            "baseline": e.baseline_metrics,
            "report_url": f"{base}/report.json" if e.report_key else None,
            "report_png_url": f"{base}/report.png" if e.report_key else None,
        }
    )
