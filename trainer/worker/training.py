"""The training stage of a job: its rows and recipe, the run in its own process(es), the
checkpoints it leaves, and where a paused job goes on from."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters import checkpoints
from adapters.registry import VersionInfo
from core.states import VersionKind
from trainer import early_stopping, hyperparameters, job_queue, job_records, jobs
from trainer.compute.launch import run_training
from trainer.compute.placement import check_quantization
from trainer.compute.recipe import (
    STOP_NO_IMPROVEMENT,
    EvalInfo,
    Method,
    Recipe,
    StepInfo,
    TrainingPaused,
    TrainResult,
    knobs,
)
from trainer.datasets import Snapshot
from trainer.jobs import ResumePoint
from trainer.reward_models import engine_environment
from trainer.worker import grading, sampling
from trainer.worker.distillation import student_model
from trainer.worker.job_run import JobRun

if TYPE_CHECKING:
    from trainer.worker.loop import Worker

# How many checkpoints a job keeps when checkpoint_every is not given: a few points to
# go back to, without storing the adapter at every step.
CHECKPOINTS_PER_JOB = 3
# Validation metrics named in the job's events (the methods report more; the data has them all).
_SHOWN = ("loss", "exact_match", "rewards/margins", "kl")

# The compute side's method for each job method (distillation trains like supervised).
_RECIPE_METHOD: dict[str, Method] = {
    "supervised": "sft",
    "distillation": "sft",
    "dpo": "dpo",
    "kto": "kto",
    hyperparameters.REINFORCEMENT: "grpo",
}


def training_rows(method: str, snapshot: Snapshot) -> list[dict[str, Any]]:
    """The snapshot's training examples as the compute side's method reads them."""
    if method in jobs.SFT_METHODS:
        return [{"messages": [dict(m) for m in r.messages]} for r in snapshot.train_sft]
    if method == "kto":
        return [r.to_json() for r in snapshot.train_ratings]
    if method == hyperparameters.REINFORCEMENT:
        return [r.to_json() for r in snapshot.train_prompts]
    return [
        {"prompt": [dict(m) for m in r.prompt], "chosen": r.chosen, "rejected": r.rejected}
        for r in snapshot.train_preferences
    ]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _describe_evaluation(info: EvalInfo) -> str:
    scores = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in sorted(info.metrics.items()) if k in _SHOWN)
    verdict = "best so far" if info.improved else f"no better than step {info.best_step}"
    return (
        f"Validation at step {info.step}/{info.total_steps}: {scores} ({verdict}; "
        f"{info.evaluations_without_improvement}/{info.patience} evaluations without improvement)"
    )


def _describe_selection(result: TrainResult) -> str:
    if result.best_step is None:
        return ""
    why = "no improvement" if result.stop_reason == STOP_NO_IMPROVEMENT else "the budget was spent"
    best = f"best validation {result.selection_metric}"
    return f"; stopped because {why}, keeping the adapter of step {result.best_step} ({best})"


def selection_data(result: TrainResult) -> dict[str, Any]:
    """How early stopping chose the kept adapter (empty without early stopping)."""
    if result.best_step is None:
        return {}
    return {
        "stop_reason": result.stop_reason,
        "best_step": result.best_step,
        "selection_metric": result.selection_metric,
        "best_validation": result.best_metrics,
        "validation_examples": result.validation_examples,
    }


def train(
    w: Worker,
    run: JobRun,
    snapshot: Snapshot,
    hp: hyperparameters.Resolved,
    start: VersionInfo | None,
    *,
    keep_checkpoints: bool = True,
) -> TrainResult:
    """Train the job's adapter (from `start`, or from the pause it resumes) on the worker's
    placement, with an event per step and validation, and its checkpoints stored (unless not
    `keep_checkpoints`: a selection job's candidates, whose checkpoints would be served on the
    job's base whatever base they were trained on)."""
    job = run.job
    start = _compatible_start(w, job, start, full=hp.full_parameters)
    resumed_from = _resume_from(w, run)
    resumed = run.resumed
    init_dir = w.store.local_path(start.digest) if start is not None else None
    if resumed is not None and resumed_from is not None:
        init_dir = w.store.local_path(resumed_from)
        # A pause's resume is the attempt's first; a dead worker's job is claimed again (job_queue).
        after = " after the previous attempt stopped" if job.attempts > 1 else ""
        w.event(
            job,
            f"Resuming from the checkpoint of step {resumed.step} of {resumed.total_steps}{after}: "
            f"{resumed.remaining_steps} step(s) left",
            data={"resume_step": resumed.step, "total_steps": resumed.total_steps},
        )
    elif start is not None:
        w.event(job, f"Training starts from {start.adapter_name} version {start.version}")
    placement = w.placement
    check_quantization(hp.quantization, placement)  # a clear 400 before any data is written
    # "auto" length: validation rows held back from the training rows (never the held-out split)
    rows, validation = early_stopping.split_validation(
        training_rows(job.method, snapshot), hp.validation_examples, job.seed
    )
    w.engines.free_device()  # a local teacher's engine gives the device back to training
    work = run.workdir / "train"
    work.mkdir(parents=True, exist_ok=True)
    data_path = _write_rows(work / "data.jsonl", rows)
    eval_path = _write_rows(work / "validation.jsonl", validation) if validation else None
    # A full fine-tune starts from a whole model (the base, a smaller student of it, a model
    # version or its own checkpoint); a LoRA from an adapter on the base.
    student = student_model(w, job, hp, run.workdir / "student") if init_dir is None else None
    base_path = w.base_of(job).path or w.settings.base_model_path
    base_dir = init_dir if hp.full_parameters and init_dir is not None else student or base_path
    adapter_dir = None if hp.full_parameters else init_dir
    recipe = Recipe(
        method=_RECIPE_METHOD[job.method],
        base_model_dir=str(base_dir),
        data_path=str(data_path),
        out_dir=str(run.workdir / "adapter"),
        progress_path=str(work / "progress.jsonl"),
        stop_path=str(work / "STOP"),
        checkpoint_dir=str(run.workdir / "checkpoints"),
        # The last step's adapter is the result itself; it is recorded below.
        checkpoint_every=w.checkpoint_every or max(1, math.ceil(hp.budget_steps / CHECKPOINTS_PER_JOB)),
        init_adapter_dir=str(adapter_dir) if adapter_dir is not None else None,
        eval_data_path=str(eval_path) if eval_path is not None else None,
        seed=job.seed,
        pause_path=str(work / "PAUSE"),
        grader=(job.config or {}).get("grader"),
        **knobs(hp),  # the placement's fields are run_training's to fill in
    )
    if resumed is not None and resumed_from is not None:
        recipe = remaining(recipe, resumed)
    w.event(job, f"Training on {placement.describe()}", data={"placement": placement.describe()})
    if job.method == hyperparameters.REINFORCEMENT:
        sampled = sampling.sampling_for(w, job, hp)
        w.event(job, sampled.describe(), data={"sampler": sampled.sampler})
        recipe = replace(recipe, sampler=sampled.sampler, rollout_name=sampling.rollout_name(job.id))

    def on_step(info: StepInfo) -> None:
        data = {
            "step": info.step,
            "total_steps": info.total_steps,
            "epoch": info.epoch,
            "train_loss": info.loss,
            "learning_rate": info.learning_rate,
            **info.metrics,
            **({"sampler": recipe.sampler} if job.method == hyperparameters.REINFORCEMENT else {}),
        }
        w.event(job, f"Step {info.step}/{info.total_steps}: training loss={info.loss:.4f}", data=data)

    checkpointed: dict[int, float] = {}

    def on_checkpoint(step: int, loss: float, path: Path) -> None:
        checkpointed[step] = loss
        if keep_checkpoints:
            save_checkpoint(w, run, step, loss, path)

    def on_evaluation(info: EvalInfo) -> None:
        w.event(job, _describe_evaluation(info), data={"validation": asdict(info)})

    on_engine = recipe.sampler == hyperparameters.SAMPLER_ENGINE
    with grading.grader_models(w, job, training=True, sampling=on_engine) as (models, engine):
        try:
            result = run_training(
                replace(recipe, grader_models=models.as_json()),
                placement,
                work,
                on_step=on_step,
                on_checkpoint=on_checkpoint,
                on_evaluation=on_evaluation,
                should_stop=lambda: job_queue.stop_request(w.db, job.id, w.worker_id),
                env=engine_environment(engine),
            )
        finally:
            if on_engine and engine is not None and recipe.rollout_name:
                sampling.unload_leftovers(engine, recipe.rollout_name)
    if resumed is not None and resumed_from is not None:
        # The job's whole run: the steps before the pause(s) and these.
        result = replace(
            result,
            losses=[*resumed.losses, *result.losses],
            trained_tokens=resumed.trained_tokens + result.trained_tokens,
        )
    # The result is the best evaluation's adapter with early stopping, else the last step's.
    kept = result.best_step or result.steps
    if keep_checkpoints and kept not in checkpointed:
        save_checkpoint(w, run, kept, checkpointed.get(kept, result.final_loss), result.out_dir)
    w.event(
        job,
        f"Training finished: {result.steps} steps, final loss {result.final_loss:.4f}, {result.seconds:.0f} s"
        + _describe_selection(result),
        data={"steps": result.steps, **selection_data(result)},
    )
    return result


def _compatible_start(w: Worker, job: jobs.JobInfo, start: VersionInfo | None, *, full: bool) -> VersionInfo | None:
    """`start` if the run can continue from it: a full fine-tune from a whole model, a LoRA from
    an adapter. The version the job names itself must fit (400); the one it would replace
    need not, and training then starts from the base model."""
    if start is None or (start.kind == VersionKind.MODEL) == full:
        return start
    whole = start.kind == VersionKind.MODEL
    if w.settings.base(job.model) is None:
        hyperparameters.check_start(job.model, whole=whole, full=full)
    kind = "a whole model" if whole else "an adapter"
    w.event(job, f"Training starts from the base model ({start.adapter_name} version {start.version} is {kind})")
    return None


def _full(job: jobs.JobInfo) -> bool:
    return (job.hyperparameters or {}).get("finetuning_type") == hyperparameters.FULL


def save_checkpoint(w: Worker, run: JobRun, step: int, loss: float, local_dir: Path) -> None:
    """Store the adapter (or whole model) of `step` where every host can read it and engines can serve it."""
    job = run.job
    # The working directory is deleted when the job ends and lives on one host; the
    # blob store is what every host (and a later rollback to a checkpoint) can read,
    # and the adapter store what engines serve the checkpoint from and a resumed job
    # continues from.
    prefix = f"checkpoints/{job.tenant_id}/{job.id}/step-{step}"
    for f in sorted(local_dir.iterdir()):
        if f.is_file():
            w.blobs.put_bytes(f"{prefix}/{f.name}", f.read_bytes())
    limits = w.limits_for(w.base_of(job))
    digest = checkpoints.store_checkpoint(
        w.store,
        local_dir,
        base=limits.base,
        max_rank=limits.max_rank,
        max_bytes=limits.max_bytes,
        # A LoRA job's checkpoints must be adapters, as before full fine-tunes existed.
        max_model_bytes=limits.max_model_bytes if _full(job) else 0,
    )
    # OpenAI's checkpoint metric names.
    metrics = {"step": step, "train_loss": loss}
    run.checkpoints[step] = job_records.add_checkpoint(
        w.db, job.id, step=step, metrics=metrics, path=prefix, digest=digest
    )
    model = checkpoints.checkpoint_model(job.adapter_name, job.id, step)
    w.event(
        job,
        f"Checkpoint saved at step {step}: callable as {model}",
        data={"checkpoint_step": step, "path": prefix, "fine_tuned_model_checkpoint": model},
    )


def _resume_from(w: Worker, run: JobRun) -> str | None:
    """The digest of the checkpoint a resumed job continues from; None when training
    starts over (not resumed, paused before saving one, or its files are not stored),
    and then the run has no resume point either."""
    point = run.resumed
    digest = None
    if point is not None and point.checkpoint_id is not None and point.remaining_steps > 0:
        digest = job_records.get_checkpoint(w.db, run.job.id, point.checkpoint_id).digest
        if digest is None:
            w.event(run.job, "The checkpoint to resume from is not stored; training starts over", level="warn")
    if digest is None:
        run.resumed = None
    return digest


def pause_point(run: JobRun, paused: TrainingPaused) -> ResumePoint | None:
    """Where the paused job goes on from: this run's checkpoint at the step it paused at
    (or, should that one be missing, its latest before); None keeps the earlier point."""
    saved = [c for step, c in run.checkpoints.items() if step <= paused.step]
    if not saved:
        return None
    checkpoint = max(saved, key=lambda c: c.step)
    before = run.resumed
    losses = [*(before.losses if before else ()), *paused.losses][: checkpoint.step]
    return ResumePoint(
        step=checkpoint.step,
        total_steps=paused.total_steps,
        checkpoint_id=checkpoint.id,
        losses=tuple(losses),
        trained_tokens=(before.trained_tokens if before else 0) + paused.trained_tokens,
    )


def remaining(recipe: Recipe, point: ResumePoint) -> Recipe:
    """The recipe for what a resumed job has left: its remaining steps, numbered on from the
    pause, at the learning rate the linear decay had reached (so the schedule goes on as if
    unpaused: warmup is 0), from the pause's checkpoint (init_adapter_dir, set by the caller)."""
    left = point.remaining_steps
    return replace(
        recipe,
        max_steps=left,
        step_offset=point.step,
        learning_rate=recipe.learning_rate * left / max(1, point.total_steps),
    )
