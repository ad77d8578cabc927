"""The train-and-evaluate stage of a job: one candidate on the job's base, or, for a selection
job (`candidate_models`, trainer.selection), one candidate per base, one after another, of
which the gate keeps one.

Each candidate trains on its base's checkpoint in a working directory of its own, keeps no
checkpoints (the job's checkpoints are served on the job's base), and is evaluated on its
base's evaluation engine against the same held-out rows. Cancelling stops the job between
candidates as during training; a pause asked for before the last candidate pauses the job,
and resuming starts the selection over (there is no checkpoint to go on from).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from adapters.registry import VersionInfo
from core.base_models import JOB_BASE_KEY, BaseModelConfig
from trainer import hyperparameters, job_base, job_queue, jobs, selection
from trainer.compute.recipe import TrainingCancelled, TrainingPaused, TrainResult
from trainer.datasets import Snapshot
from trainer.evaluate import Comparison
from trainer.gates import Decision, GateConfig, decide
from trainer.jobs import JobInfo
from trainer.worker import evaluating, training
from trainer.worker.job_run import JobRun

if TYPE_CHECKING:
    from trainer.worker.loop import Worker


@dataclass
class Trained:
    """The job's result: its adapter, how it was evaluated, and the gate's verdict on it."""

    base: BaseModelConfig
    result: TrainResult
    comparison: Comparison
    decision: Decision
    trained_tokens: int  # every candidate's
    # A selection job's: the chosen base, why, and every candidate's row (the report's table).
    model_selection: dict[str, Any] | None = None


def _evaluated(
    w: Worker, run: JobRun, snapshot: Snapshot, hp: hyperparameters.Resolved, start: VersionInfo | None,
    baseline: VersionInfo | None, gates: GateConfig, *, candidate: bool = False,
) -> Trained:  # fmt: skip
    """Train `run`'s job on its base (a selection's `candidate`: without checkpoints), then
    evaluate it against `baseline` and ask the gate."""
    job = run.job
    n_train = jobs.training_examples(snapshot, job.method)
    with w.tracing.stage("train", steps=hp.budget_steps, examples=n_train):
        result = training.train(w, run, snapshot, hp, start, keep_checkpoints=not candidate)
    if job_queue.heartbeat(w.db, job.id, w.worker_id):
        raise TrainingCancelled(result.steps)
    if not candidate and jobs.get_job(w.db, None, job.id).pause_requested:
        w.event(job, "Pause requested after the last training step; the job finishes instead")
    with w.tracing.stage("evaluate", heldout=snapshot.heldout_count):
        comparison = evaluating.evaluate(w, job, snapshot, result.out_dir, baseline)
    decision = decide(comparison, gates)
    return Trained(w.base_of(job), result, comparison, decision, result.trained_tokens)


def train_and_evaluate(
    w: Worker, run: JobRun, snapshot: Snapshot, hp: hyperparameters.Resolved, start: VersionInfo | None,
    baseline: VersionInfo | None, gates: GateConfig,
) -> Trained:  # fmt: skip
    """The job's candidate: the one it trains, or, for a selection job, the one chosen."""
    job = run.job
    candidates = selection.configured_candidates(w.settings, job.config)
    if not candidates:
        return _evaluated(w, run, snapshot, hp, start, baseline, gates)
    return _select(w, run, snapshot, hp, candidates, baseline, gates)


def candidate_job(job: JobInfo, base: BaseModelConfig) -> JobInfo:
    """The job as it trains its candidate on `base` (what trainer.job_base reads its base from)."""
    config = {k: v for k, v in (job.config or {}).items() if k != JOB_BASE_KEY}
    return replace(job, config=job_base.job_config(base, config))


def _select(
    w: Worker, run: JobRun, snapshot: Snapshot, hp: hyperparameters.Resolved, candidates: list[BaseModelConfig],
    baseline: VersionInfo | None, gates: GateConfig,
) -> Trained:  # fmt: skip
    job = run.job
    names = ", ".join(b.name for b in candidates)
    w.event(job, f"Model selection: one candidate on each of {len(candidates)} base models ({names})")
    trained: list[Trained] = []
    rows: list[selection.CandidateFigures] = []
    for i, base in enumerate(candidates, start=1):
        if i > 1:
            _between_candidates(w, job, trained)
        w.event(job, f"Candidate {i}/{len(candidates)}: training on base model {base.name}")
        own = JobRun(job=candidate_job(job, base), workdir=run.workdir / f"candidate-{i}")
        own.workdir.mkdir(parents=True)
        t = _evaluated(w, own, snapshot, hp, None, baseline, gates, candidate=True)
        row = selection.figures(base, t.comparison, t.decision.promote, gates, w.settings)
        w.event(job, f"Candidate {i}/{len(candidates)}: {row.describe()}", data={"candidate": row.row(False)})
        trained.append(t)
        rows.append(row)
    if jobs.get_job(w.db, None, job.id).pause_requested:
        w.event(job, "Pause requested after the last candidate; the job finishes instead")
    choice = selection.choose(rows, gates)
    chosen = trained[choice.winner]
    table = [r.row(i == choice.winner) for i, r in enumerate(rows)]
    w.event(
        job,
        f"Chose base model {chosen.base.name}: {choice.reason}",
        data={"chosen": chosen.base.name, "candidates": table},
    )
    summary = {"chosen": chosen.base.name, "reason": choice.reason, "candidates": table}
    total = sum(t.trained_tokens for t in trained)
    return replace(chosen, trained_tokens=total, model_selection=summary)


def _between_candidates(w: Worker, job: JobInfo, trained: list[Trained]) -> None:
    """Cancel or pause the job here when asked to (a beat also tells the job is still ours)."""
    steps = sum(t.result.steps for t in trained)
    if job_queue.heartbeat(w.db, job.id, w.worker_id):
        raise TrainingCancelled(steps)
    if jobs.get_job(w.db, None, job.id).pause_requested:
        w.event(job, "Paused between candidates; resuming starts the selection over")
        raise TrainingPaused(steps, steps, [], 0)
