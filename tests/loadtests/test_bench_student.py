"""loadtests.bench_student without training (the runs are the benchmark's): its tasks, knobs and table."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from loadtests import bench_student
from loadtests.bench_auto import Scored
from trainer import hyperparameters as hps


def test_the_tasks_vary_kind_and_size() -> None:
    assert {t.kind for t in bench_student.TASKS} == {"routing", "reservation", "order"}
    assert len({t.n_train for t in bench_student.TASKS}) >= 3


def test_runs_resolve_as_a_student_job_with_auto_or_fixed_length() -> None:
    auto = hps.resolve("distillation", bench_student.student_knobs(2.0, "auto"), 80, student=True)
    assert auto.full_parameters and auto.early_stopping
    assert auto.learning_rate == pytest.approx(2 * hps.STUDENT_LEARNING_RATE)
    fixed = hps.resolve("distillation", bench_student.student_knobs(1.0, "3"), 80, student=True)
    assert (fixed.n_epochs, fixed.early_stopping) == (3, False)


def test_lengths_and_multipliers_are_checked() -> None:
    assert bench_student.parse_lengths("auto, 3") == ["auto", "3"]
    assert bench_student.parse_multipliers("0.5,2") == [0.5, 2.0]
    for bad in ("0", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_student.parse_lengths(bad)
    for bad in ("0", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_student.parse_multipliers(bad)


def test_table_line() -> None:
    hp = hps.resolve("distillation", bench_student.student_knobs(1.0, "auto"), 40, student=True)
    result = SimpleNamespace(steps=60, stop_reason="no_improvement", final_loss=0.01234)
    line = bench_student.Row("t", "auto", Scored(hp, result, 8, 12.3, 0.375)).line()
    assert (
        line
        == f"| t | {hps.STUDENT_LEARNING_RATE:.0e} | auto | 60/{hp.budget_steps} | no_improvement | 12 | 0.012 | 0.38 |"
    )
    assert line.count("|") == bench_student.HEADER.splitlines()[0].count("|")
