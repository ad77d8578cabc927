"""The smaller-student arm of the distillation bench: the job it queues and the lines it adds."""

from __future__ import annotations

from types import SimpleNamespace

from loadtests import student_arm
from loadtests.launcher import BASE_MODEL


def test_the_arm_queues_a_student_job_and_reports_it_against_the_long_prompt() -> None:
    created: dict[str, object] = {}

    def create(**body: object) -> SimpleNamespace:
        created.update(body)
        return SimpleNamespace(id="ftjob-1")

    c = SimpleNamespace(fine_tuning=SimpleNamespace(jobs=SimpleNamespace(create=create)))
    context = {"system": "Find the order number.", "examples": []}
    assert student_arm.create_job(c, "file-t", "file-v", context, {"n_epochs": 1}, layers="spread:10") == "ftjob-1"  # type: ignore[arg-type]
    assert created["model"] == BASE_MODEL and created["suffix"] == student_arm.STUDENT
    distillation = {**context, "student": {"layers": "spread:10"}, "max_tokens": 8, "hyperparameters": {"n_epochs": 1}}
    assert created["method"] == {"type": "distillation", "distillation": distillation}

    results = {"student_layers": 15, "teacher_layers": 30, "student_size_fraction": 0.6, "teacher_agreement_exact": 0.9}
    job = SimpleNamespace(
        model_extra={"distillation": {"results": results}},
        metadata={"tailor_decision": "rejected"},
        fine_tuned_model=f"{student_arm.STUDENT}@v1",
    )
    assert student_arm.results_of(job) == results
    assert student_arm.served_name(job) == f"{student_arm.STUDENT}@v1"
    (line,) = student_arm.summary([0.4, 0.5, 0.6], [0.2, 0.25, 0.3], 0.875, results)
    assert "15 of 30 layers, 60% of the weights" in line
    assert "agreement with the teacher 0.875 on the measured traffic, 0.900" in line
    assert "latency p50 250 ms vs 500 ms" in line and "(2.00x)" in line
    assert "(n/a)" in student_arm.summary([], [], 0.0, {})[0]


def test_the_student_job_keeps_its_own_auto_hyperparameters_unless_given() -> None:
    assert student_arm.hyperparameters() == {}
    assert student_arm.hyperparameters(4, None) == {"n_epochs": 4}
    assert student_arm.hyperparameters(None, 0.5) == {"learning_rate_multiplier": 0.5}
