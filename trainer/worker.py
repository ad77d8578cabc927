"""The trainer worker: claims queued fine-tuning jobs and takes each from data to a served version.

Run one per training host, from the repository root:

    python -m trainer.worker            # or `tailor-trainer`; uses the TAILOR_* settings, like the gateway
    python -m trainer.worker --job ID   # run one queued job now and exit

Several workers share one PostgreSQL database and object stores (adapter store, blob
store) and claim jobs side by side (see trainer.jobs); on SQLite run exactly one.

Per job, each stage leaves an event the tenant can read (GET /v1/fine_tuning/jobs/{id}/events):

1. dataset: load the job's snapshot, or build one from its uploaded files or, without
   files, from the tenant's feedback (trainer.datasets); the job records its id;
2. train: LoRA SFT or DPO on TRL (trainer.compute; DPO starts from the adapter the job
   names, else from the adapter it will replace) in its own process(es) on the devices of
   TAILOR_TRAINER_DEVICES, into `<data_dir>/jobs/<job id>`, with a metrics event per step
   and the heartbeat checked every few seconds. Cancellation stops the run at the next
   step; then nothing is registered. A pause stops it at the next step too, after a
   checkpoint: the job is `paused` (trainer.job_queue.mark_paused) and the worker moves on; once
   resumed, a worker trains the remaining steps from that checkpoint (see jobs.ResumePoint
   for what is and is not restored);
3. checkpoints: every `checkpoint_every` steps (and the final adapter), copied to the blob
   store under `checkpoints/<tenant>/<job>/step-<n>/` and to the adapter store (so each is
   callable as `name:<job id>:ckpt-step-<n>`, adapters.checkpoints), listed as JobCheckpoint rows;
4. evaluate the trained adapter against the version it would replace (or the base model)
   on the snapshot's held-out split: both generate and are scored on a vLLM engine
   (trainer.compute.evaluation; TAILOR_EVAL_ENGINE_URL, else an engine of the worker's own),
   then gated (trainer.gates);
5. register it as a candidate version with its lineage (job, dataset, parent, metrics),
   record the Evaluation and a report (`reports/<tenant>/<job>/report.json|loss.png`);
6. apply the decision: promote (or start a canary) when the tenant's policy says
   auto_promote or the name has no serving version yet; keep it a candidate otherwise;
   reject it when the gates fail. The job succeeds either way, naming `<name>@v<n>`.

Evaluation runs before registration (not after) so the version's lineage metrics include
how it did on held-out data; nothing about the files changes in between.

Any failure fails the job with {code, message}; the working directory always goes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

from adapters import checkpoints, promotion, registry
from adapters.registry import ValidationLimits, VersionInfo
from adapters.store import AdapterStore
from core import audit
from core.blobs import BlobStore
from core.config import Settings
from core.db import Database
from core.errors import TailorError
from core.models import Job
from core.outbound import OutboundPolicy
from core.quotas import Quotas
from core.states import JobStatus
from trainer import datasets, distill, early_stopping, files, hyperparameters, job_queue, job_records, jobs, policy
from trainer.compute import evaluation
from trainer.compute.engine import WorkerEngines
from trainer.compute.launch import run_training
from trainer.compute.placement import Placement, check_quantization, choose
from trainer.compute.recipe import (
    STOP_NO_IMPROVEMENT,
    EvalInfo,
    Method,
    Recipe,
    StepInfo,
    TrainingCancelled,
    TrainingPaused,
    TrainResult,
    knobs,
)
from trainer.datasets import SFTRecord, Snapshot
from trainer.distill import DistillSpec, LocalTeacher, RemoteTeacher, Teacher
from trainer.evaluate import Comparison, EvalExample, JudgeConfig
from trainer.gates import Decision, GateConfig, decide
from trainer.job_queue import JobLost
from trainer.job_records import CheckpointInfo
from trainer.jobs import JobInfo, ResumePoint
from trainer.policy import PolicyInfo, get_policy
from trainer.report import write_report
from trainer.rewards import reward_for
from trainer.tracing import JobTracing

log = logging.getLogger("tailor.trainer")

# How many checkpoints a job keeps when checkpoint_every is not given: a few points to
# go back to, without storing the adapter at every step.
CHECKPOINTS_PER_JOB = 3
# Validation metrics named in the job's events (the methods report more; the data has them all).
_SHOWN = ("loss", "exact_match", "rewards/margins", "kl")
# A worker that has not beaten its heartbeat for this long is presumed dead. Long enough
# for the longest step-free stretch (loading the model, evaluating a big held-out split),
# which the background heartbeat covers anyway.
STALE_AFTER_S = 600.0
# Between the background heartbeats that cover the stretches without training steps.
HEARTBEAT_S = 15.0


@dataclass
class _Run:
    """What one job run knows as it goes (also what cleanup needs after a failure)."""

    job: JobInfo
    workdir: Path
    version: VersionInfo | None = None
    # A resumed job's starting point (its last pause), and the checkpoints this run saved.
    resumed: ResumePoint | None = None
    checkpoints: dict[int, CheckpointInfo] = field(default_factory=dict)


class _Heartbeat:
    """Beats the job's heartbeat from a background thread while no training step does.

    Steps beat on their own (should_stop); this covers model loading and evaluation.
    """

    def __init__(self, db: Database, job_id: str, worker_id: str, interval_s: float) -> None:
        self.db, self.job_id, self.worker_id, self.interval_s = db, job_id, worker_id, interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                job_queue.heartbeat(self.db, self.job_id, self.worker_id)
            except JobLost:
                return  # the main thread learns it at its next beat
            except Exception:  # noqa: BLE001 - a transient database error must not kill the beat
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _outcome(decision: Decision, baseline: VersionInfo | None, policy: PolicyInfo) -> str:
    """promoted | canary | candidate | rejected: what the gates' verdict means for this tenant."""
    if not decision.promote:
        return "rejected"
    # A name nothing serves yet has no traffic to protect: its first good version serves.
    if baseline is None:
        return "promoted"
    if not policy.auto_promote:
        return "candidate"
    return "canary" if 0 < policy.canary_fraction < 1 else "promoted"


def _eval_examples(snapshot: Snapshot) -> list[EvalExample]:
    """Held-out prompts with an answer known to be good: corrections and good answers,
    preferred answers, and answers rated good (each prompt and answer once)."""
    found: dict[tuple[str, str], EvalExample] = {}
    pairs = [(r.prompt, r.answer) for r in snapshot.heldout_sft]
    pairs += [(r.prompt, r.chosen) for r in snapshot.heldout_preferences]
    pairs += [(r.prompt, r.completion) for r in snapshot.heldout_ratings if r.label]
    for prompt, answer in pairs:
        key = (datasets.prompt_key(prompt), datasets.normalise_text(answer))
        found.setdefault(key, EvalExample(messages=[dict(m) for m in prompt], reference=answer))
    return list(found.values())


# The compute side's method for each job method (distillation trains like supervised).
_RECIPE_METHOD: dict[str, Method] = {
    "supervised": "sft",
    "distillation": "sft",
    "dpo": "dpo",
    "kto": "kto",
    hyperparameters.REINFORCEMENT: "grpo",
}


def _training_rows(method: str, snapshot: Snapshot) -> list[dict[str, Any]]:
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


def _selection_data(result: TrainResult) -> dict[str, Any]:
    if result.best_step is None:
        return {}
    return {
        "stop_reason": result.stop_reason,
        "best_step": result.best_step,
        "selection_metric": result.selection_metric,
        "best_validation": result.best_metrics,
        "validation_examples": result.validation_examples,
    }


def _metrics_dict(value: Any) -> dict[str, Any]:
    raw = asdict(value) if is_dataclass(value) and not isinstance(value, type) else dict(value)
    # An infinite perplexity is not JSON (PostgreSQL's json type and the HTTP responses
    # refuse it): stored and shown as null, "not measurable".
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in raw.items()}


class Worker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: AdapterStore,
        blobs: BlobStore,
        *,
        worker_id: str | None = None,
        checkpoint_every: int | None = None,
        stale_after_s: float = STALE_AFTER_S,
        max_attempts: int = 2,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.settings, self.db, self.store, self.blobs = settings, db, store, blobs
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.checkpoint_every = checkpoint_every
        self.stale_after_s, self.max_attempts = stale_after_s, max_attempts
        self.heartbeat_s = heartbeat_s
        self.tracing = JobTracing(settings)

    @functools.cached_property
    def limits(self) -> ValidationLimits:
        return ValidationLimits.from_settings(self.settings)

    @functools.cached_property
    def placement(self) -> Placement:
        return choose(self.settings.trainer_devices, self.settings.trainer_sharding)

    @functools.cached_property
    def engines(self) -> WorkerEngines:
        # On a GPU an idle engine of ours would hold memory the next training run needs.
        return WorkerEngines(self.settings, keep_own_engine=self.placement.device == "cpu")

    @functools.cached_property
    def tokenizer(self) -> Any:
        # What evaluation counts tokens with: the served model's own tokenizer and chat template.
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.settings.base_model_path)

    def close(self) -> None:
        """Stop what the worker started (its own evaluation engine) and its tracing."""
        if "engines" in self.__dict__:
            self.engines.release()
        self.tracing.shutdown()

    # --- the loop -------------------------------------------------------------

    def run_once(self, job_id: str | None = None) -> bool:
        """Claim one queued job (the oldest, or `job_id`) and run it to the end; False when
        there was none to claim."""
        job = job_queue.claim_next(self.db, self.worker_id, job_id=job_id)
        if job is None:
            return False
        self._run(job)
        return True

    def run_forever(self, stop: threading.Event, poll_s: float = 2.0) -> None:
        """Run jobs until `stop` is set (checked between jobs); requeue dead workers' jobs."""
        log.info("worker %s started", self.worker_id)
        next_sweep = 0.0
        while not stop.is_set():
            try:
                # Any worker may sweep: the sweep's conditional updates make it idempotent.
                if time.monotonic() >= next_sweep:
                    job_queue.requeue_stale(self.db, self.stale_after_s, self.max_attempts)
                    self.trigger_policies()
                    next_sweep = time.monotonic() + min(60.0, self.stale_after_s / 4)
                if self.run_once():
                    continue
            except Exception:  # noqa: BLE001 - one bad poll (database away) must not end the worker
                log.exception("worker %s: polling failed", self.worker_id)
            stop.wait(poll_s)
        log.info("worker %s stopped", self.worker_id)

    def trigger_policies(self) -> list[str]:
        """Queue the retraining runs that tenants' policies call for now (see trainer.policy)."""
        created = []
        for trigger in policy.due_retrains(self.db):
            try:
                method, dataset_id = self._policy_method(trigger.tenant_id, trigger.adapter_name)
                job = jobs.submit(
                    self.db,
                    trigger.tenant_id,
                    actor=audit.POLICY,
                    method=method,
                    model=self.settings.base_model_name,
                    adapter_name=trigger.adapter_name,
                    source="policy",
                    dataset_id=dataset_id,
                    max_lora_rank=self.settings.engine_max_lora_rank,
                    quotas=Quotas.from_settings(self.settings),
                )
            except TailorError as exc:
                log.warning(
                    "policy retrain of %s/%s not queued: %s", trigger.tenant_id, trigger.adapter_name, exc.message
                )
                continue
            policy.mark_triggered(self.db, trigger.tenant_id)
            job_records.add_event(
                self.db, job.id, f"Queued by the tenant's retraining policy: {trigger.reason}; method {method}."
            )
            created.append(job.id)
        return created

    def _policy_method(self, tenant_id: str, adapter_name: str) -> tuple[str, str | None]:
        """(method, dataset id) for a policy-triggered job: what the feedback is made of picks
        the method (trainer.policy.method_for). Feedback that cannot make a snapshot now
        leaves the choice to supervised and the snapshot to the run, as for any job."""
        try:
            snapshot = jobs.feedback_snapshot(self.db, self.blobs, tenant_id, adapter_name)
            method = policy.method_for(snapshot)
            jobs.training_examples(snapshot, method)
        except TailorError:
            return "supervised", None
        return method, snapshot.id

    # --- one job ---------------------------------------------------------------

    def _run(self, job: JobInfo) -> None:
        run = _Run(job=job, workdir=self.settings.data_dir / "jobs" / job.id, resumed=job.resume)
        try:
            # Leftovers of an earlier attempt on this host are useless: start clean.
            shutil.rmtree(run.workdir, ignore_errors=True)
            run.workdir.mkdir(parents=True)
            self._event(job, f"Job started on worker {self.worker_id} (attempt {job.attempts})")
            with (
                self.tracing.job(job, ok=(TrainingCancelled, TrainingPaused, JobLost)),
                _Heartbeat(self.db, job.id, self.worker_id, self.heartbeat_s),
            ):
                self._pipeline(run)
        except TrainingCancelled as e:
            self._event(job, f"Job cancelled after {e.step} training step(s); nothing was registered")
            self._finish(job, status=JobStatus.CANCELLED)
        except TrainingPaused as e:
            try:
                job_queue.mark_paused(self.db, job.id, self.worker_id, self._pause_point(run, e))
            except JobLost:
                log.warning("worker %s lost job %s while pausing it", self.worker_id, job.id)
        except JobLost:
            # Requeued as stale (we were too slow to beat) or finished by someone else:
            # the job is no longer ours to write, whatever state it is in.
            log.warning("worker %s lost job %s", self.worker_id, job.id)
        except Exception as e:  # noqa: BLE001 - every failure must end as a failed job
            self._fail(run, e)
        finally:
            shutil.rmtree(run.workdir, ignore_errors=True)
            self.engines.free_device()

    def _pipeline(self, run: _Run) -> None:
        job = run.job
        with self.tracing.stage("dataset"):
            snapshot = self._snapshot(job)
        n_train = jobs.training_examples(snapshot, job.method)
        hp = hyperparameters.resolve(job.method, job.hyperparameters, n_train)
        job_queue.update_running(self.db, job.id, self.worker_id, dataset_id=snapshot.id, hyperparameters=hp.as_dict())
        self._event(
            job,
            f"Dataset {snapshot.id}: {len(snapshot.train_sft)} chat, "
            f"{len(snapshot.train_preferences)} preference and {len(snapshot.train_ratings)} rated examples "
            f"to train on, {snapshot.heldout_count} held out",
            data={"dataset_id": snapshot.id, "hyperparameters": hp.as_dict()},
        )

        baseline = promotion.active_version(self.db, job.tenant_id, job.adapter_name)
        start = self._starting_point(job, baseline)
        self._event(job, hp.describe_length(), data={"early_stopping": hp.early_stopping})
        with self.tracing.stage("train", steps=hp.budget_steps, examples=n_train):
            result = self._train(run, snapshot, hp, start)
        if job_queue.heartbeat(self.db, job.id, self.worker_id):
            raise TrainingCancelled(result.steps)
        if jobs.get_job(self.db, None, job.id).pause_requested:
            self._event(job, "Pause requested after the last training step; the job finishes instead")

        with self.tracing.stage("evaluate", heldout=snapshot.heldout_count):
            comparison = self._evaluate(run, snapshot, result.out_dir, baseline)
        policy = get_policy(self.db, job.tenant_id)
        decision = decide(comparison, GateConfig.from_dict(policy.gates))
        train_metrics = {
            "train_loss": result.final_loss,
            "steps": result.steps,
            "examples": result.examples_used,
            "seconds": round(result.seconds, 1),
            **_selection_data(result),
        }
        eval_metrics: dict[str, Any] = {
            "candidate": _metrics_dict(comparison.candidate),
            "baseline": _metrics_dict(comparison.baseline),
            "gates_passed": decision.promote,
            "reasons": list(decision.reasons),
        }
        if job.method == "distillation":
            eval_metrics["distillation"] = self._distillation_metrics(job, snapshot, comparison)

        # Lineage: the version it was trained from, else the one it is meant to replace.
        parent = start or baseline
        with self.tracing.stage("register"):
            run.version = version = promotion.register_candidate(
                self.db,
                self.store,
                self.limits,
                tenant_id=job.tenant_id,
                name=job.adapter_name,
                source_dir=result.out_dir,
                base_model_name=self.settings.base_model_name,
                actor=audit.actor_for_job(job.id),
                job_id=job.id,
                dataset_id=snapshot.id,
                metrics={**train_metrics, **eval_metrics},
                parent_version_id=parent.id if parent else None,
            )
        self._event(
            job,
            f"Registered {job.adapter_name} version {version.version} as a candidate",
            data={"version": version.version, "version_id": version.id},
        )

        outcome = _outcome(decision, baseline, policy)
        report_key = self._report(job, result, comparison, decision)
        job_records.record_evaluation(
            self.db,
            tenant_id=job.tenant_id,
            job_id=job.id,
            candidate_version_id=version.id,
            baseline_version_id=baseline.id if baseline else None,
            dataset_id=snapshot.id,
            candidate_metrics=eval_metrics["candidate"],
            baseline_metrics=eval_metrics["baseline"],
            decision=outcome,
            reasons=list(decision.reasons),
            report_key=report_key,
        )
        # Last before finishing: once a version serves, nothing else here can fail the job.
        with self.tracing.stage("apply", decision=outcome, version=version.version):
            self._apply(job, version, outcome, decision, policy)
        pinned = f"{job.adapter_name}@v{version.version}"
        self._finish(
            job,
            status=JobStatus.SUCCEEDED,
            fine_tuned_model=pinned,
            result_version_id=version.id,
            decision=outcome,
            metrics={**train_metrics, **eval_metrics},
            trained_tokens=result.trained_tokens or None,
        )
        self._event(job, f"The job has successfully completed: {pinned} ({outcome})", data={"decision": outcome})

    # --- stages ----------------------------------------------------------------

    def _snapshot(self, job: JobInfo) -> Snapshot:
        # A retried distillation job finds its teacher's answers here: they are not asked twice.
        if job.dataset_id is not None:
            return datasets.load_snapshot(self.db, self.blobs, job.tenant_id, job.dataset_id)
        if job.method == "distillation":
            return self._distill_snapshot(job)
        if job.training_file is not None:
            return datasets.build_from_files(self.db, self.blobs, job.tenant_id, job.training_file, job.validation_file)
        return jobs.feedback_snapshot(self.db, self.blobs, job.tenant_id, job.adapter_name)

    def _version_of(self, tenant_id: str, model: str) -> VersionInfo | None:
        """The version `model` (`name` or a pinned `name@vN`) serves; None for the base model."""
        base = self.settings.base_model_name
        if model == base:
            return None
        resolved = registry.resolve(self.db, tenant_id, model, base)
        info = registry.get_adapter(self.db, tenant_id, model.partition("@v")[0])
        return next((v for v in info.versions if v.id == resolved.version_id), None)

    def _starting_point(self, job: JobInfo, baseline: VersionInfo | None) -> VersionInfo | None:
        """The version whose weights training starts from; None: a fresh LoRA on the base."""
        if job.model != self.settings.base_model_name:
            return self._version_of(job.tenant_id, job.model)
        # Preference methods nudge an existing behaviour (the ratings rate ITS answers);
        # from a bare base they have little to stand on.
        return baseline if job.method in hyperparameters.PREFERENCE_METHODS else None

    # --- distillation -------------------------------------------------------------

    @contextlib.contextmanager
    def _teacher(self, job: JobInfo, spec: DistillSpec) -> Iterator[Teacher]:
        t, s = spec.teacher, self.settings
        if t.remote:

            def progress(done: int, total: int) -> None:
                # About ten events per job, however many inputs: enough to see it move.
                if done % max(1, total // 10) == 0 or done == total:
                    self._event(job, f"Teacher answered {done}/{total} inputs", data={"teacher_answers": done})

            yield RemoteTeacher(
                base_url=t.base_url or "",
                api_key=distill.teacher_api_key(t, s),
                model=t.model or "",
                max_tokens=spec.max_tokens,
                concurrency=s.teacher_concurrency,
                timeout_s=s.teacher_timeout_s,
                on_progress=progress,
                # Asked before each request and after each answer (at most every few
                # seconds): a cancelled job stops asking the teacher at once.
                should_stop=lambda: job_queue.heartbeat(self.db, job.id, self.worker_id),
                policy=OutboundPolicy.from_settings(s),
            )
            return
        # One of the tenant's own versions (or the base model) answers on the worker's engine,
        # loaded under an internal name for this job only.
        version = self._version_of(job.tenant_id, t.model or job.model)
        engine = self.engines.client()
        if version is None:
            yield LocalTeacher(engine, engine.served_model, spec.max_tokens)
            return
        name = f"tailor-teacher-{job.id}"
        with engine.adapters({name: self.store.local_path(version.digest)}):
            yield LocalTeacher(engine, name, spec.max_tokens)

    def _distill_snapshot(self, job: JobInfo) -> Snapshot:
        spec = DistillSpec.from_json(job.config or {})
        if job.training_file is None:
            raise TailorError(400, "A distillation job needs a training_file of inputs.", code="no_training_data")

        def inputs(file_id: str) -> list[tuple[dict[str, str], ...]]:
            seen: dict[str, tuple[dict[str, str], ...]] = {}
            for r in files.read_examples(self.db, self.blobs, job.tenant_id, file_id):
                seen.setdefault(datasets.prompt_key(r.messages), r.messages)
            return list(seen.values())

        train_inputs = inputs(job.training_file)
        held_inputs = inputs(job.validation_file) if job.validation_file else []
        prompts = train_inputs + held_inputs
        self._event(
            job,
            f"Asking the teacher ({spec.teacher.describe(job.model)}) to answer {len(prompts)} inputs"
            + (" with the tenant's context" if spec.has_context else ""),
            data={"inputs": len(prompts)},
        )
        started = time.monotonic()
        with self._teacher(job, spec) as teacher:
            answers = teacher.answer([distill.with_context(spec, p) for p in prompts])
        if job_queue.heartbeat(self.db, job.id, self.worker_id):
            raise TrainingCancelled(0)
        records = [
            SFTRecord(messages=(*p, {"role": "assistant", "content": a})) if a.strip() else None
            for p, a in zip(prompts, answers, strict=True)
        ]
        answered = sum(r is not None for r in records)
        self._event(
            job,
            f"Teacher answered {answered} of {len(prompts)} inputs in {time.monotonic() - started:.0f} s"
            + (f"; {len(prompts) - answered} empty answer(s) dropped" if answered < len(prompts) else ""),
            data={"answered": answered, "empty": len(prompts) - answered},
        )
        train = [r for r in records[: len(train_inputs)] if r is not None]
        held = [r for r in records[len(train_inputs) :] if r is not None] if job.validation_file else None
        if not train:
            raise TailorError(400, "The teacher gave no usable answer to train on.", code="no_training_data")
        params: dict[str, Any] = {
            "source": "distillation",
            "training_file": job.training_file,
            "validation_file": job.validation_file,
            "training_sha256": files.get_file(self.db, job.tenant_id, job.training_file).sha256,
            "teacher": spec.teacher.describe(job.model),
            "context_sha256": hashlib.sha256(repr((spec.system, spec.examples)).encode()).hexdigest(),
            "max_tokens": spec.max_tokens,
        }
        return datasets.build_from_answers(self.db, self.blobs, job.tenant_id, train, params, heldout=held)

    def _distillation_metrics(self, job: JobInfo, snapshot: Snapshot, comparison: Comparison) -> dict[str, Any]:
        spec = DistillSpec.from_json(job.config or {})
        prompts = [r.prompt for r in snapshot.heldout_sft] or [r.prompt for r in snapshot.train_sft]
        counts = distill.context_token_counts(distill.token_counter(self.settings.base_model_path), spec, prompts)
        c, b = comparison.candidate, comparison.baseline
        metrics = {
            "teacher": spec.teacher.describe(job.model),
            **counts,
            "teacher_agreement_exact": c.exact_match,
            "teacher_agreement_f1": c.token_f1,
            "baseline_agreement_exact": b.exact_match,
        }
        self._event(
            job,
            f"Distilled: {counts.get('prompt_tokens_saved_per_request', 0):.0f} prompt tokens saved per request "
            f"({counts.get('prompt_tokens_saved_fraction', 0):.0%}); agrees with the teacher on "
            f"{c.exact_match:.0%} of held-out inputs (token F1 {c.token_f1:.3f})",
            data={"distillation": metrics},
        )
        return metrics

    def _train(
        self, run: _Run, snapshot: Snapshot, hp: hyperparameters.Resolved, start: VersionInfo | None
    ) -> TrainResult:
        job = run.job
        resumed_from = self._resume_from(run)
        resumed = run.resumed
        init_dir = self.store.local_path(start.digest) if start is not None else None
        if resumed is not None and resumed_from is not None:
            init_dir = self.store.local_path(resumed_from)
            self._event(
                job,
                f"Resuming from the checkpoint of step {resumed.step} of {resumed.total_steps}: "
                f"{resumed.remaining_steps} step(s) left",
                data={"resume_step": resumed.step, "total_steps": resumed.total_steps},
            )
        elif start is not None:
            self._event(job, f"Training starts from {start.adapter_name} version {start.version}")
        placement = self.placement
        check_quantization(hp.quantization, placement)  # a clear 400 before any data is written
        # "auto" length: validation rows held back from the training rows (never the held-out split)
        rows, validation = early_stopping.split_validation(
            _training_rows(job.method, snapshot), hp.validation_examples, job.seed
        )
        self.engines.free_device()  # a local teacher's engine gives the device back to training
        work = run.workdir / "train"
        work.mkdir(parents=True, exist_ok=True)
        data_path = _write_rows(work / "data.jsonl", rows)
        eval_path = _write_rows(work / "validation.jsonl", validation) if validation else None
        recipe = Recipe(
            method=_RECIPE_METHOD[job.method],
            base_model_dir=str(self.settings.base_model_path),
            data_path=str(data_path),
            out_dir=str(run.workdir / "adapter"),
            progress_path=str(work / "progress.jsonl"),
            stop_path=str(work / "STOP"),
            checkpoint_dir=str(run.workdir / "checkpoints"),
            # The last step's adapter is the result itself; it is recorded below.
            checkpoint_every=self.checkpoint_every or max(1, math.ceil(hp.budget_steps / CHECKPOINTS_PER_JOB)),
            init_adapter_dir=str(init_dir) if init_dir is not None else None,
            eval_data_path=str(eval_path) if eval_path is not None else None,
            seed=job.seed,
            pause_path=str(work / "PAUSE"),
            grader=(job.config or {}).get("grader"),
            **knobs(hp),  # the placement's fields are run_training's to fill in
        )
        if resumed is not None and resumed_from is not None:
            recipe = _remaining(recipe, resumed)
        self._event(job, f"Training on {placement.describe()}", data={"placement": placement.describe()})

        def on_step(info: StepInfo) -> None:
            data = {
                "step": info.step,
                "total_steps": info.total_steps,
                "epoch": info.epoch,
                "train_loss": info.loss,
                "learning_rate": info.learning_rate,
                **info.metrics,
            }
            self._event(job, f"Step {info.step}/{info.total_steps}: training loss={info.loss:.4f}", data=data)

        checkpointed: dict[int, float] = {}

        def on_checkpoint(step: int, loss: float, path: Path) -> None:
            checkpointed[step] = loss
            self._checkpoint(run, step, loss, path)

        def on_evaluation(info: EvalInfo) -> None:
            self._event(job, _describe_evaluation(info), data={"validation": asdict(info)})

        result = run_training(
            recipe,
            placement,
            work,
            on_step=on_step,
            on_checkpoint=on_checkpoint,
            on_evaluation=on_evaluation,
            should_stop=lambda: job_queue.stop_request(self.db, job.id, self.worker_id),
        )
        if resumed is not None and resumed_from is not None:
            # The job's whole run: the steps before the pause(s) and these.
            result = replace(
                result,
                losses=[*resumed.losses, *result.losses],
                trained_tokens=resumed.trained_tokens + result.trained_tokens,
            )
        # The result is the best evaluation's adapter with early stopping, else the last step's.
        kept = result.best_step or result.steps
        if kept not in checkpointed:
            self._checkpoint(run, kept, checkpointed.get(kept, result.final_loss), result.out_dir)
        self._event(
            job,
            f"Training finished: {result.steps} steps, final loss {result.final_loss:.4f}, {result.seconds:.0f} s"
            + _describe_selection(result),
            data={"steps": result.steps, **_selection_data(result)},
        )
        return result

    def _checkpoint(self, run: _Run, step: int, loss: float, local_dir: Path) -> None:
        job = run.job
        # The working directory is deleted when the job ends and lives on one host; the
        # blob store is what every host (and a later rollback to a checkpoint) can read,
        # and the adapter store what engines serve the checkpoint from and a resumed job
        # continues from.
        prefix = f"checkpoints/{job.tenant_id}/{job.id}/step-{step}"
        for f in sorted(local_dir.iterdir()):
            if f.is_file():
                self.blobs.put_bytes(f"{prefix}/{f.name}", f.read_bytes())
        limits = self.limits
        digest = checkpoints.store_checkpoint(
            self.store, local_dir, base=limits.base, max_rank=limits.max_rank, max_bytes=limits.max_bytes
        )
        # OpenAI's checkpoint metric names.
        metrics = {"step": step, "train_loss": loss}
        run.checkpoints[step] = job_records.add_checkpoint(
            self.db, job.id, step=step, metrics=metrics, path=prefix, digest=digest
        )
        model = checkpoints.checkpoint_model(job.adapter_name, job.id, step)
        self._event(
            job,
            f"Checkpoint saved at step {step}: callable as {model}",
            data={"checkpoint_step": step, "path": prefix, "fine_tuned_model_checkpoint": model},
        )

    def _resume_from(self, run: _Run) -> str | None:
        """The digest of the checkpoint a resumed job continues from; None when training
        starts over (not resumed, paused before saving one, or its files are not stored),
        and then the run has no resume point either."""
        point = run.resumed
        digest = None
        if point is not None and point.checkpoint_id is not None and point.remaining_steps > 0:
            digest = job_records.get_checkpoint(self.db, run.job.id, point.checkpoint_id).digest
            if digest is None:
                self._event(run.job, "The checkpoint to resume from is not stored; training starts over", level="warn")
        if digest is None:
            run.resumed = None
        return digest

    def _pause_point(self, run: _Run, paused: TrainingPaused) -> ResumePoint | None:
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

    def _judge(self) -> JudgeConfig | None:
        s = self.settings
        if not s.judge_base_url or not s.judge_model:
            return None  # no judge: evaluated on exact match, token F1 and perplexity only
        key = s.judge_api_key.get_secret_value() if s.judge_api_key else ""
        return JudgeConfig(base_url=s.judge_base_url, api_key=key, model=s.judge_model, max_pairs=s.judge_max_pairs)

    def _evaluate(self, run: _Run, snapshot: Snapshot, candidate_dir: Path, baseline: VersionInfo | None) -> Comparison:
        job = run.job
        if job.method == hyperparameters.REINFORCEMENT:
            return self._evaluate_graded(job, snapshot, candidate_dir, baseline)
        examples = _eval_examples(snapshot)
        against = f"{baseline.adapter_name} version {baseline.version}" if baseline else "the base model"
        self._event(job, f"Evaluating against {against} on {len(examples)} held-out example(s)")
        baseline_dir = self.store.local_path(baseline.digest) if baseline else None
        started = time.monotonic()
        comparison, plan = evaluation.evaluate(
            self.engines.client(),
            self.tokenizer,
            examples,
            candidate_dir=candidate_dir,
            baseline_dir=baseline_dir,
            tag=job.id,
            max_model_len=self.settings.engine_max_model_len,
            judge=self._judge(),
        )
        c, b = comparison.candidate, comparison.baseline
        self._event(
            job,
            f"Evaluation: token F1 {c.token_f1:.3f} vs {b.token_f1:.3f}, "
            f"exact match {c.exact_match:.3f} vs {b.exact_match:.3f} "
            f"(answers up to {plan.max_tokens} tokens, {time.monotonic() - started:.0f} s)",
            data={"candidate": _metrics_dict(c), "baseline": _metrics_dict(b), "max_tokens": plan.max_tokens},
        )
        return comparison

    def _evaluate_graded(
        self, job: JobInfo, snapshot: Snapshot, candidate_dir: Path, baseline: VersionInfo | None
    ) -> Comparison:
        """A reinforcement job: the grader's mean score on the held-out prompts, candidate vs baseline."""
        against = f"{baseline.adapter_name} version {baseline.version}" if baseline else "the base model"
        prompts = snapshot.heldout_prompts
        self._event(job, f"Grading against {against} on {len(prompts)} held-out prompt(s)")
        comparison = evaluation.evaluate_graded(
            self.engines.client(),
            prompts,
            reward_for((job.config or {})["grader"]),
            candidate_dir=candidate_dir,
            baseline_dir=self.store.local_path(baseline.digest) if baseline else None,
            tag=job.id,
            max_tokens=int(job.hyperparameters.get("max_completion_length") or 0)
            or hyperparameters.DEFAULT_MAX_COMPLETION_LENGTH,
        )
        c, b = comparison.candidate, comparison.baseline
        self._event(
            job,
            f"Evaluation: mean grader score {c.grader_score:.3f} vs {b.grader_score:.3f}",
            data={"candidate": _metrics_dict(c), "baseline": _metrics_dict(b)},
        )
        return comparison

    def _report(self, job: JobInfo, result: TrainResult, comparison: Comparison, decision: Decision) -> str:
        prefix = f"reports/{job.tenant_id}/{job.id}"
        with tempfile.TemporaryDirectory(prefix="tailor-report-") as tmp:
            json_path, png_path = write_report(
                Path(tmp), job_id=job.id, losses=list(result.losses), comparison=comparison, decision=decision
            )
            self.blobs.put_bytes(f"{prefix}/loss.png", Path(png_path).read_bytes())
            # The JSON last: its presence says the report is complete.
            self.blobs.put_bytes(f"{prefix}/report.json", Path(json_path).read_bytes())
        return f"{prefix}/report.json"

    def _apply(self, job: JobInfo, version: VersionInfo, outcome: str, decision: Decision, policy: PolicyInfo) -> None:
        # Each action records its own audit event, by this job, in the transaction of the change.
        name, n, actor = job.adapter_name, version.version, audit.actor_for_job(job.id)
        by = f"job {job.id}"
        if outcome == "rejected":
            reasons = "; ".join(decision.reasons)
            promotion.reject(self.db, job.tenant_id, name, n, reason=reasons, actor=actor)
            self._event(
                job,
                f"Gates failed; version {n} rejected: {reasons}",
                level="warn",
                data={"reasons": list(decision.reasons)},
            )
        elif outcome == "candidate":
            self._event(
                job,
                f"Gates passed; version {n} stays a candidate (auto-promotion is off "
                f"for this tenant): call it as {name}@v{n}",
            )
        elif outcome == "canary":
            promotion.start_canary(self.db, job.tenant_id, name, n, policy.canary_fraction, actor=actor, by=by)
            self._event(job, f"Gates passed; version {n} serves {policy.canary_fraction:.0%} of {name} as a canary")
        else:
            promotion.promote(self.db, job.tenant_id, name, n, actor=actor, by=by)
            self._event(job, f"Gates passed; {name} now serves version {n}")

    # --- bookkeeping -------------------------------------------------------------

    def _event(self, job: JobInfo, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        job_records.add_event(self.db, job.id, message, level=level, data=data)

    def _finish(self, job: JobInfo, **fields: Any) -> None:
        try:
            job_queue.finish_job(self.db, job.id, self.worker_id, **fields)
        except JobLost:
            log.warning("worker %s lost job %s before finishing it", self.worker_id, job.id)

    def _fail(self, run: _Run, exc: Exception) -> None:
        job = run.job
        if isinstance(exc, TailorError):
            error = {"code": exc.code or "training_failed", "message": exc.message, "param": exc.param}
        else:
            log.exception("job %s failed", job.id)
            # The exception's text may carry paths, addresses or a remote's words: the log has it.
            message = "The job failed because of an internal error in the trainer; the operator's log has details."
            error = {"code": "internal_error", "message": message, "param": None}
        if run.version is not None:
            # Registered, then something broke: keep it from ever being promoted by mistake.
            try:
                promotion.reject(
                    self.db,
                    job.tenant_id,
                    job.adapter_name,
                    run.version.version,
                    reason=f"job {job.id} failed: {error['message']}",
                    actor=audit.actor_for_job(job.id),
                )
            except Exception:  # noqa: BLE001 - the job's failure is the error to report
                log.warning("could not reject version %s of failed job %s", run.version.id, job.id, exc_info=True)
        self._event(job, f"Job failed: {error['message']}", level="error", data={"code": error["code"]})
        self._finish(job, status=JobStatus.FAILED, error=error)


def _remaining(recipe: Recipe, point: ResumePoint) -> Recipe:
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


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.worker` (or `tailor-trainer`): claim and run jobs until stopped;
    `--job ID` runs that one queued job and exits (0 when it succeeded)."""
    import argparse

    from core.config import get_settings
    from core.db import migrate

    parser = argparse.ArgumentParser(prog="tailor-trainer", description=main.__doc__)
    parser.add_argument("--job", help="run this queued job now, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    migrate(settings.database_url or "")
    db = Database.from_settings(settings)
    worker = Worker(settings, db, AdapterStore.from_settings(settings), BlobStore.from_settings(settings))
    try:
        if args.job:
            if not worker.run_once(args.job):
                log.error("job %s is not queued", args.job)
                return 1
            with db.session() as s:
                done = s.get(Job, args.job)
                return 0 if done is not None and done.status == JobStatus.SUCCEEDED else 1
        stop = threading.Event()
        # SIGTERM/SIGINT end the loop between jobs; a job running then is finished first.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        worker.run_forever(stop, poll_s=settings.trainer_poll_s)
        return 0
    finally:
        worker.close()
        db.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
