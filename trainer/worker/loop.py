"""The worker's loop: claim a job, take it through its stages (trainer.worker.training,
.distillation, .evaluating, .decision), finish or fail it; and the `tailor-trainer` command."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from typing import Any

from adapters import promotion, registry
from adapters.registry import Lineage, ValidationLimits, VersionInfo
from adapters.store import AdapterStore
from core import audit
from core.base_models import BaseModelConfig, warn_of_serving_eval_engines
from core.blobs import BlobStore
from core.config import Settings
from core.db import Database
from core.errors import TailorError
from core.models import Job
from core.quotas import Quotas
from core.states import JobStatus, VersionState
from trainer import datasets, hyperparameters, job_base, job_queue, job_records, jobs, merge_policy, policy, selection
from trainer.compute.engine import WorkerEngines
from trainer.compute.placement import Placement, choose
from trainer.compute.recipe import TrainingCancelled, TrainingPaused
from trainer.datasets import Snapshot
from trainer.gates import GateConfig
from trainer.graders import Capabilities
from trainer.job_queue import JobLost
from trainer.jobs import JobInfo
from trainer.jobs.methods import MERGE
from trainer.policy import get_policy
from trainer.tracing import JobTracing
from trainer.worker import decision as decision_stage
from trainer.worker import distillation, evaluating, merging, selecting, training
from trainer.worker.job_run import Heartbeat, JobRun

log = logging.getLogger("tailor.trainer")

# A worker that has not beaten its heartbeat for this long is presumed dead. Long enough
# for the longest step-free stretch (loading the model, evaluating a big held-out split),
# which the background heartbeat covers anyway.
STALE_AFTER_S = 600.0
# Between the background heartbeats that cover the stretches without training steps.
HEARTBEAT_S = 15.0


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
        self._tokenizers: dict[str, Any] = {}

    @functools.cached_property
    def limits(self) -> ValidationLimits:
        return ValidationLimits.from_settings(self.settings)

    def limits_for(self, base: BaseModelConfig) -> ValidationLimits:
        """What a job's adapters on `base` are checked against."""
        return self.limits if base.default else ValidationLimits.from_settings(self.settings, base)

    def base_of(self, job: JobInfo) -> BaseModelConfig:
        """The base model the job trains on (trainer.job_base)."""
        return job_base.job_base(self.settings, job.config)

    @functools.cached_property
    def placement(self) -> Placement:
        return choose(self.settings.trainer_devices, self.settings.trainer_sharding)

    @functools.cached_property
    def engines(self) -> WorkerEngines:
        # On a GPU an idle engine of ours would hold memory the next training run needs.
        return WorkerEngines(self.settings, keep_own_engine=self.placement.device == "cpu")

    def tokenizer(self, base: BaseModelConfig) -> Any:
        # What evaluation counts tokens with: the served model's own tokenizer and chat template.
        from transformers import AutoTokenizer

        if base.name not in self._tokenizers:
            self._tokenizers[base.name] = AutoTokenizer.from_pretrained(base.path or self.settings.base_model_path)
        return self._tokenizers[base.name]

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
        warn_of_serving_eval_engines(self.settings.bases, log)
        next_sweep = next_merge_pass = 0.0
        while not stop.is_set():
            try:
                # Any worker may sweep: the sweep's conditional updates make it idempotent.
                if time.monotonic() >= next_sweep:
                    job_queue.requeue_stale(self.db, self.stale_after_s, self.max_attempts)
                    self.trigger_policies()
                    next_sweep = time.monotonic() + min(60.0, self.stale_after_s / 4)
                if time.monotonic() >= next_merge_pass:
                    self.trigger_merges()
                    next_merge_pass = time.monotonic() + merge_policy.PASS_EVERY_S
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
                plan = policy.retrain_plan(self.db, self.blobs, trigger.tenant_id, trigger.adapter_name)
                method = plan.method
                base = job_base.serving_base(self.settings, self.db, trigger.tenant_id, trigger.adapter_name)
                job_base.check_trainable(self.settings, base, method=method, full=False)
                job = jobs.submit(
                    self.db,
                    trigger.tenant_id,
                    actor=audit.POLICY,
                    method=method,
                    model=base.name,
                    adapter_name=trigger.adapter_name,
                    source="policy",
                    dataset_id=plan.dataset_id,
                    max_lora_rank=self.settings.engine_max_lora_rank,
                    quotas=Quotas.from_settings(self.settings),
                    config=job_base.job_config(base, plan.config),
                    grader_capabilities=Capabilities(python=self.settings.python_graders_enabled),
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

    def trigger_merges(self) -> list[str]:
        """Queue the merges that tenants' policies call for now (see trainer.merge_policy)."""
        quotas = Quotas.from_settings(self.settings)
        others = [b.name for b in self.settings.bases if not b.default]
        return merge_policy.queue_merges(
            self.db, base_model=self.settings.base_model_name, quotas=quotas, other_bases=others
        )

    # --- one job ---------------------------------------------------------------

    def _run(self, job: JobInfo) -> None:
        # Each attempt in a directory of its own: a killed worker's training process goes on
        # until its next step, writing its progress and checkpoints by path, and the next attempt
        # on this host must not read them as its own.
        job_dir = self.settings.data_dir / "jobs" / job.id
        run = JobRun(job=job, workdir=job_dir / f"attempt-{job.attempts}", resumed=job.resume)
        try:
            # Leftovers of an earlier attempt on this host are useless: start clean.
            shutil.rmtree(job_dir, ignore_errors=True)
            run.workdir.mkdir(parents=True)
            self.event(job, f"Job started on worker {self.worker_id} (attempt {job.attempts})")
            with (
                self.tracing.job(job, ok=(TrainingCancelled, TrainingPaused, JobLost)),
                Heartbeat(self.db, job.id, self.worker_id, self.heartbeat_s),
            ):
                if job.method == MERGE:
                    merging.merge(self, run)
                else:
                    self._pipeline(run)
        except TrainingCancelled as e:
            self.event(job, f"Job cancelled after {e.step} training step(s); nothing was registered")
            self._finish(job, status=JobStatus.CANCELLED)
        except TrainingPaused as e:
            try:
                job_queue.mark_paused(self.db, job.id, self.worker_id, training.pause_point(run, e))
            except JobLost:
                log.warning("worker %s lost job %s while pausing it", self.worker_id, job.id)
        except JobLost:
            # Requeued as stale (we were too slow to beat) or finished by someone else:
            # the job is no longer ours to write, whatever state it is in.
            log.warning("worker %s lost job %s", self.worker_id, job.id)
        except Exception as e:  # noqa: BLE001 - every failure must end as a failed job
            self._fail(run, e)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)
            self.engines.free_device()

    def _pipeline(self, run: JobRun) -> None:
        job = run.job
        with self.tracing.stage("dataset"):
            snapshot = self._snapshot(job)
        n_train = jobs.training_examples(snapshot, job.method)
        hp = distillation.resolve_hyperparameters(job, n_train)
        job_queue.update_running(self.db, job.id, self.worker_id, dataset_id=snapshot.id, hyperparameters=hp.as_dict())
        self.event(
            job,
            f"Dataset {snapshot.id}: {len(snapshot.train_sft)} chat, "
            f"{len(snapshot.train_preferences)} preference and {len(snapshot.train_ratings)} rated examples "
            f"to train on, {snapshot.heldout_count} held out",
            data={"dataset_id": snapshot.id, "hyperparameters": hp.as_dict()},
        )

        base = self.base_of(job)
        baseline = promotion.active_version(self.db, job.tenant_id, job.adapter_name)
        start = self._starting_point(job, baseline)
        # Checked again: the names may have moved to versions of another base since the job was queued.
        for version in {v.id: v for v in (baseline, start) if v is not None}.values():
            what = f"{version.adapter_name!r} version {version.version}"
            for trains_on in selection.configured_candidates(self.settings, job.config) or [base]:
                job_base.check_same_base(self.settings, trains_on, version.base_model, what)
        self.event(job, hp.describe_length(), data={"early_stopping": hp.early_stopping})
        policy = get_policy(self.db, job.tenant_id)
        trained = selecting.train_and_evaluate(
            self, run, snapshot, hp, start, baseline, GateConfig.from_dict(policy.gates)
        )
        base, result, comparison, decision = trained.base, trained.result, trained.comparison, trained.decision
        train_metrics = {
            "train_loss": result.final_loss,
            "steps": result.steps,
            "examples": result.examples_used,
            "seconds": round(result.seconds, 1),
            **training.selection_data(result),
        }
        eval_metrics: dict[str, Any] = {
            "candidate": evaluating.metrics_dict(comparison.candidate),
            "baseline": evaluating.metrics_dict(comparison.baseline),
            "gates_passed": decision.promote,
            "reasons": list(decision.reasons),
        }
        if trained.model_selection is not None:
            eval_metrics["model_selection"] = trained.model_selection
        if job.method == "distillation":
            eval_metrics["distillation"] = distillation.distillation_metrics(self, job, snapshot, comparison)

        # Lineage: the version it was trained from, else the one it is meant to replace.
        parent = start or baseline
        lineage = Lineage(
            job_id=job.id,
            dataset_id=snapshot.id,
            parent_version_id=parent.id if parent else None,
            metrics={**train_metrics, **eval_metrics},
        )
        with self.tracing.stage("register"):
            # A candidate: callable as `name@vN`, served as `name` only once promoted.
            run.version = version = registry.register_dir(
                self.db,
                self.store,
                self.limits_for(base),
                tenant_id=job.tenant_id,
                name=job.adapter_name,
                source_dir=result.out_dir,
                base_model_name=base.name,
                actor=audit.actor_for_job(job.id),
                source="training",
                activate=False,
                state=VersionState.CANDIDATE,
                lineage=lineage,
            )
        self.event(
            job,
            f"Registered {job.adapter_name} version {version.version} as a candidate",
            data={"version": version.version, "version_id": version.id},
        )

        outcome = decision_stage.outcome(decision, baseline, policy)
        report_key = evaluating.store_report(self, job, result, comparison, decision, trained.model_selection)
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
            decision_stage.apply(self, job, version, outcome, decision, policy)
        pinned = f"{job.adapter_name}@v{version.version}"
        self._finish(
            job,
            status=JobStatus.SUCCEEDED,
            fine_tuned_model=pinned,
            result_version_id=version.id,
            decision=outcome,
            metrics={**train_metrics, **eval_metrics},
            trained_tokens=trained.trained_tokens or None,
        )
        self.event(job, f"The job has successfully completed: {pinned} ({outcome})", data={"decision": outcome})

    # --- stages ----------------------------------------------------------------

    def _snapshot(self, job: JobInfo) -> Snapshot:
        # A retried distillation job finds its teacher's answers here: they are not asked twice.
        if job.dataset_id is not None:
            return datasets.load_snapshot(self.db, self.blobs, job.tenant_id, job.dataset_id)
        if job.method == "distillation":
            return distillation.distill_snapshot(self, job)
        if job.training_file is not None:
            return datasets.build_from_files(self.db, self.blobs, job.tenant_id, job.training_file, job.validation_file)
        return jobs.feedback_snapshot(self.db, self.blobs, job.tenant_id, job.adapter_name)

    def version_of(self, tenant_id: str, model: str) -> VersionInfo | None:
        """The version `model` (`name` or a pinned `name@vN`) serves; None for the base model."""
        if self.settings.base(model) is not None:
            return None
        resolved = registry.resolve(self.db, tenant_id, model, self.settings.base_model_name)
        info = registry.get_adapter(self.db, tenant_id, model.partition("@v")[0])
        return next((v for v in info.versions if v.id == resolved.version_id), None)

    def _starting_point(self, job: JobInfo, baseline: VersionInfo | None) -> VersionInfo | None:
        """The version whose weights training starts from; None: a fresh LoRA on the base."""
        if self.settings.base(job.model) is None:
            return self.version_of(job.tenant_id, job.model)
        # Preference methods nudge an existing behaviour (the ratings rate ITS answers);
        # from a bare base they have little to stand on.
        return baseline if job.method in hyperparameters.PREFERENCE_METHODS else None

    # --- bookkeeping -------------------------------------------------------------

    def event(self, job: JobInfo, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        """Add an event to the job's timeline (what the tenant reads as the job's events)."""
        job_records.add_event(self.db, job.id, message, level=level, data=data)

    def _finish(self, job: JobInfo, **fields: Any) -> None:
        try:
            job_queue.finish_job(self.db, job.id, self.worker_id, **fields)
        except JobLost:
            log.warning("worker %s lost job %s before finishing it", self.worker_id, job.id)

    def _fail(self, run: JobRun, exc: Exception) -> None:
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
        self.event(job, f"Job failed: {error['message']}", level="error", data={"code": error["code"]})
        self._finish(job, status=JobStatus.FAILED, error=error)


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
    stale = settings.trainer_stale_after_s
    worker = Worker(
        settings,
        db,
        AdapterStore.from_settings(settings),
        BlobStore.from_settings(settings),
        stale_after_s=stale,
        heartbeat_s=min(HEARTBEAT_S, stale / 4),
    )
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
