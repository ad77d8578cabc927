"""The distillation stage of a job: the teacher answers the job's inputs, the answers become
its snapshot, a smaller student (when the job asks for one) is derived to train on them, and
afterwards what the student saves and how closely it agrees."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import TailorError
from core.outbound import OutboundPolicy
from core.states import VersionKind
from trainer import datasets, distill, files, hyperparameters, job_queue
from trainer.compute.engine import model_engine
from trainer.compute.recipe import TrainingCancelled
from trainer.datasets import SFTRecord, Snapshot
from trainer.distill import DistillSpec, LocalTeacher, RemoteTeacher, Teacher
from trainer.evaluate import Comparison
from trainer.jobs import JobInfo

if TYPE_CHECKING:
    from trainer.worker.loop import Worker


@contextlib.contextmanager
def teacher(w: Worker, job: JobInfo, spec: DistillSpec) -> Iterator[Teacher]:
    """The job's teacher: a remote OpenAI-compatible endpoint, or one of the tenant's own
    versions (or the base model) on the worker's engine."""
    t, s = spec.teacher, w.settings
    if t.remote:

        def progress(done: int, total: int) -> None:
            # About ten events per job, however many inputs: enough to see it move.
            if done % max(1, total // 10) == 0 or done == total:
                w.event(job, f"Teacher answered {done}/{total} inputs", data={"teacher_answers": done})

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
            should_stop=lambda: job_queue.heartbeat(w.db, job.id, w.worker_id),
            policy=OutboundPolicy.from_settings(s),
        )
        return
    # Loaded under an internal name for this job only.
    version = w.version_of(job.tenant_id, t.model or job.model)
    engine = w.engines.client()
    if version is None:
        yield LocalTeacher(engine, engine.served_model, spec.max_tokens)
        return
    name = f"tailor-teacher-{job.id}"
    if version.kind == VersionKind.MODEL:  # a whole model answers on an engine of its own
        with model_engine(w.settings, w.store.local_path(version.digest), name) as own:
            yield LocalTeacher(own, own.served_model, spec.max_tokens)
        return
    with engine.adapters({name: w.store.local_path(version.digest)}):
        yield LocalTeacher(engine, name, spec.max_tokens)


def distill_snapshot(w: Worker, job: JobInfo) -> Snapshot:
    """The job's snapshot: its training (and validation) inputs with the teacher's answers."""
    spec = DistillSpec.from_json(job.config or {})
    if job.training_file is None:
        raise TailorError(400, "A distillation job needs a training_file of inputs.", code="no_training_data")

    def inputs(file_id: str) -> list[tuple[dict[str, str], ...]]:
        seen: dict[str, tuple[dict[str, str], ...]] = {}
        for r in files.read_examples(w.db, w.blobs, job.tenant_id, file_id):
            seen.setdefault(datasets.prompt_key(r.messages), r.messages)
        return list(seen.values())

    train_inputs = inputs(job.training_file)
    held_inputs = inputs(job.validation_file) if job.validation_file else []
    prompts = train_inputs + held_inputs
    w.event(
        job,
        f"Asking the teacher ({spec.teacher.describe(job.model)}) to answer {len(prompts)} inputs"
        + (" with the tenant's context" if spec.has_context else ""),
        data={"inputs": len(prompts)},
    )
    started = time.monotonic()
    with teacher(w, job, spec) as t:
        answers = t.answer([distill.with_context(spec, p) for p in prompts])
    if job_queue.heartbeat(w.db, job.id, w.worker_id):
        raise TrainingCancelled(0)
    records = [
        SFTRecord(messages=(*p, {"role": "assistant", "content": a})) if a.strip() else None
        for p, a in zip(prompts, answers, strict=True)
    ]
    answered = sum(r is not None for r in records)
    w.event(
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
        "training_sha256": files.get_file(w.db, job.tenant_id, job.training_file).sha256,
        "teacher": spec.teacher.describe(job.model),
        "context_sha256": hashlib.sha256(repr((spec.system, spec.examples)).encode()).hexdigest(),
        "max_tokens": spec.max_tokens,
    }
    return datasets.build_from_answers(w.db, w.blobs, job.tenant_id, train, params, heldout=held)


def _student_spec(job: JobInfo) -> distill.StudentSpec | None:
    spec = DistillSpec.from_json(job.config or {}) if job.method == "distillation" else None
    return spec.student if spec is not None else None


def resolve_hyperparameters(job: JobInfo, n_train: int) -> hyperparameters.Resolved:
    """The job's hyperparameters for `n_train` training rows; a smaller student's learning rate
    is a student's (hyperparameters.STUDENT_LEARNING_RATE), not a full fine-tune's."""
    return hyperparameters.resolve(job.method, job.hyperparameters, n_train, student=_student_spec(job) is not None)


def student_model(w: Worker, job: JobInfo, hp: hyperparameters.Resolved, out: Path) -> Path | None:
    """The smaller student the job trains, derived from the base model into `out`; None when
    the job trains an adapter (no student asked for)."""
    student = _student_spec(job)
    if student is None:
        return None
    if not hp.full_parameters:  # the job routes make it so; a job queued otherwise is refused here
        raise TailorError(
            400,
            'A smaller student trains all of its parameters: finetuning_type must be "full".',
            code="invalid_hyperparameters",
            param="hyperparameters.finetuning_type",
        )
    derived = distill.derive_student(student, w.settings.base_model_path, out)
    w.event(
        job,
        f"Student: {w.settings.base_model_name} with {len(derived.kept)} of its {derived.source_layers} layers "
        f"({derived.weights_bytes / 2**20:.0f} MiB of weights), all of them trained",
        data={"student_layers": list(derived.kept), "teacher_layers": derived.source_layers},
    )
    return out


def distillation_metrics(w: Worker, job: JobInfo, snapshot: Snapshot, comparison: Comparison) -> dict[str, Any]:
    """The prompt tokens the student saves per request and how often it agrees with its teacher."""
    spec = DistillSpec.from_json(job.config or {})
    prompts = [r.prompt for r in snapshot.heldout_sft] or [r.prompt for r in snapshot.train_sft]
    counts = distill.context_token_counts(distill.token_counter(w.settings.base_model_path), spec, prompts)
    c, b = comparison.candidate, comparison.baseline
    metrics = {
        "teacher": spec.teacher.describe(job.model),
        **counts,
        "teacher_agreement_exact": c.exact_match,
        "teacher_agreement_f1": c.token_f1,
        "baseline_agreement_exact": b.exact_match,
        **(distill.size_metrics(spec.student, w.settings.base_model_path) if spec.student else {}),
    }
    smaller = (
        f"; the student has {metrics['student_layers']} of {metrics['teacher_layers']} layers "
        f"({metrics['student_size_fraction']:.0%} of the weights)"
        if spec.student
        else ""
    )
    w.event(
        job,
        f"Distilled: {counts.get('prompt_tokens_saved_per_request', 0):.0f} prompt tokens saved per request "
        f"({counts.get('prompt_tokens_saved_fraction', 0):.0%}); agrees with the teacher on "
        f"{c.exact_match:.0%} of held-out inputs (token F1 {c.token_f1:.3f})" + smaller,
        data={"distillation": metrics},
    )
    return metrics
