"""The "smaller student" arm of loadtests.bench_distillation: the same context distilled into
a student with fewer layers (method.distillation.student), served on an engine of its own.

    from loadtests import student_arm
    hp = student_arm.hyperparameters()                 # the student's own "auto" defaults
    job_id = student_arm.create_job(c, train_file.id, val_file.id, w.context(), hp, layers="every-other")
    job = wait_for_job(c, job_id)
    arms["C"] = Arm("C", student_arm.served_name(job))      # the bare ticket, like arm B
    ...
    out += student_arm.summary(arms["A"].latencies, arms["C"].latencies, agreement_c, results_of(job))

Arm C answers with the bare ticket, like the adapter arm; what it adds to the table is the
student's agreement with the teacher (its job's own evaluation, and on the measured traffic)
and its p50 latency against the base model with the long prompt (arm A). The student's first
request starts its engine: warm it (one round unmeasured) before measuring, as the bench
warms the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai

from loadtests.launcher import BASE_MODEL
from loadtests.stats import num, percentile, to_ms

STUDENT = "parser-small"


def method(context: dict[str, Any], hyperparameters: dict[str, Any], layers: str | list[int]) -> dict[str, Any]:
    """The job's method: the bench's context, distilled into a student keeping `layers`."""
    distillation = {**context, "student": {"layers": layers}, "max_tokens": 8, "hyperparameters": hyperparameters}
    return {"type": "distillation", "distillation": distillation}


def hyperparameters(epochs: int | None = None, lr_multiplier: float | None = None) -> dict[str, Any]:
    """The student job's hyperparameters: "auto" (the student's own defaults) for what is not given."""
    given = {"n_epochs": epochs, "learning_rate_multiplier": lr_multiplier}
    return {k: v for k, v in given.items() if v is not None}


def create_job(
    c: openai.OpenAI,
    training_file: str,
    validation_file: str,
    context: dict[str, Any],
    hyperparameters: dict[str, Any],
    layers: str | list[int] = "every-other",
) -> str:
    """Queue the student's job; its hyperparameters become a full fine-tune of the student."""
    job = c.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=training_file,
        validation_file=validation_file,
        suffix=STUDENT,
        method=method(context, hyperparameters, layers),  # type: ignore[arg-type]
    )
    return job.id


def results_of(job: Any) -> dict[str, Any]:
    """The finished job's `distillation.results` (agreement, size against the teacher)."""
    return dict((job.model_extra or {}).get("distillation", {}).get("results", {}))


def served_name(job: Any) -> str:
    """What arm C calls: the promoted name, else the pinned version the job made."""
    decision = (job.metadata or {}).get("tailor_decision")
    return STUDENT if decision == "promoted" else str(job.fine_tuned_model)


def summary(
    base_latencies: Sequence[float], student_latencies: Sequence[float], agreement: float, results: dict[str, Any]
) -> list[str]:
    """Lines for the bench's report: the student against the base model with the long prompt."""
    base_p50, student_p50 = percentile(base_latencies, 50), percentile(student_latencies, 50)
    speedup = f"{base_p50 / student_p50:.2f}x" if base_p50 and student_p50 else "n/a"
    return [
        f"Student `{STUDENT}` ({results.get('student_layers')} of {results.get('teacher_layers')} layers, "
        f"{results.get('student_size_fraction') or 0:.0%} of the weights): agreement with the teacher "
        f"{agreement:.3f} on the measured traffic, {results.get('teacher_agreement_exact') or 0:.3f} in its job's "
        f"evaluation; latency p50 {num(to_ms(student_p50), 0)} ms vs {num(to_ms(base_p50), 0)} ms for "
        f"{BASE_MODEL} with the long prompt ({speedup}).",
    ]
