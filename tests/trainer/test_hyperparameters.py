"""trainer.hyperparameters' "auto" length and QLoRA knob, and trainer.early_stopping's split (no torch)."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import TailorError
from trainer import early_stopping as es
from trainer import hyperparameters as hps


def chat(question: str, answer: str = "A") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


# --- the validation split -------------------------------------------------------------------


@pytest.mark.parametrize(("n", "held"), [(1, 0), (19, 0), (20, 8), (40, 8), (150, 15), (300, 30), (5000, 100)])
def test_validation_size(n: int, held: int) -> None:
    assert es.validation_size(n) == held


def test_split_is_deterministic_disjoint_and_order_free() -> None:
    rows = [chat(f"question {i}") for i in range(50)]
    train, val = es.split_validation(rows, 8, seed=7)
    assert len(val) == 8 and len(train) == 42
    assert sorted(map(str, train + val)) == sorted(map(str, rows))
    # both sides keep the original order
    assert [rows.index(r) for r in train] == sorted(rows.index(r) for r in train)
    # the same seed gives the same split whatever the order of the rows; another seed another one
    train2, val2 = es.split_validation(list(reversed(rows)), 8, seed=7)
    assert sorted(map(str, val2)) == sorted(map(str, val))
    assert sorted(map(str, es.split_validation(rows, 8, seed=8)[1])) != sorted(map(str, val))


def test_rows_sharing_a_prompt_stay_on_one_side() -> None:
    # the same question (up to whitespace) with different answers, and DPO rows sharing a prompt
    rows = [chat(f"question {i % 10}", f"answer {i}") for i in range(40)]
    rows += [chat(f"question  {i % 10} ", "spaced") for i in range(10)]
    train, val = es.split_validation(rows, 8, seed=0)
    assert len(val) >= 8

    def prompts(side: list[dict[str, Any]]) -> set[str]:
        return {" ".join(r["messages"][0]["content"].split()) for r in side}

    assert not prompts(train) & prompts(val)
    pairs = [{"prompt": [{"role": "user", "content": f"q{i % 5}"}], "chosen": "a", "rejected": "b"} for i in range(30)]
    train, val = es.split_validation(pairs, 3, seed=0)
    assert val and not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in val}


def test_nothing_is_held_back_when_nothing_would_be_left() -> None:
    rows = [chat("the one question", f"answer {i}") for i in range(30)]
    assert es.split_validation(rows, 8, seed=0) == (rows, [])
    assert es.split_validation(rows, 0, seed=0) == (rows, [])


# --- resolve: the auto budget ---------------------------------------------------------------


def test_auto_length_is_early_stopping_with_a_budget() -> None:
    r = hps.resolve("supervised", {}, 300)
    assert r.early_stopping and r.validation_examples == 30 and r.train_rows == 270
    assert r.n_epochs == es.budget_epochs(270) and r.max_steps is None
    assert r.budget_steps == r.n_epochs * 68  # ceil(270 / 4) steps per pass
    assert r.patience == es.PATIENCE and es.MIN_EVAL_EVERY <= r.eval_every <= r.budget_steps // es.MIN_EVALUATIONS
    assert r.as_dict()["early_stopping"] is True and "eval_every" not in r.as_dict()
    assert "held back for validation" in r.describe_length()
    # the stored knobs resolve again to the same run (a retried job)
    assert hps.resolve("supervised", r.as_dict(), 300) == r


def test_budget_shrinks_with_the_data() -> None:
    epochs = [es.budget_epochs(n) for n in (12, 32, 135, 270, 900, 9900)]
    assert epochs == sorted(epochs, reverse=True)
    assert epochs[0] == es.MAX_BUDGET_EPOCHS and epochs[-1] == es.MIN_BUDGET_EPOCHS


def test_an_explicit_length_trains_exactly_that_long() -> None:
    for knobs in ({"n_epochs": 3}, {"max_steps": 40}):
        r = hps.resolve("supervised", knobs, 300)
        assert not r.early_stopping and (r.validation_examples, r.eval_every, r.patience) == (0, 0, 0)
        assert r.train_rows == 300 and "without early stopping" in r.describe_length()
    # unless early stopping is asked for: the length becomes the budget
    r = hps.resolve("dpo", {"max_steps": 40, "early_stopping": True}, 300)
    assert r.early_stopping and r.budget_steps == 40 and r.eval_every == 40 // es.MIN_EVALUATIONS


def test_tiny_datasets_train_the_fixed_passes_and_say_why() -> None:
    r = hps.resolve("supervised", {}, 10)
    assert not r.early_stopping and r.n_epochs == hps.fixed_epochs(10) == 10
    assert "too few" in r.describe_length()
    assert not hps.resolve("supervised", {"early_stopping": False}, 300).early_stopping


# --- validation of the new knobs ------------------------------------------------------------


def test_quantization_and_early_stopping_are_validated() -> None:
    assert hps.validate("supervised", {"quantization": "4bit"})["quantization"] == "4bit"
    assert hps.resolve("kto", {"quantization": "4bit"}, 50).quantization == hps.QUANTIZATION_4BIT
    assert hps.resolve("kto", {}, 50).quantization == hps.NO_QUANTIZATION
    for name, value in (("quantization", "8bit"), ("quantization", True), ("early_stopping", "yes")):
        with pytest.raises(TailorError) as err:
            hps.validate("supervised", {name: value})
        assert (err.value.status, err.value.param) == (400, f"hyperparameters.{name}")


def test_the_sampler_is_engine_trainer_or_auto_for_reinforcement_only() -> None:
    assert hps.validate("reinforcement", {})["sampler"] == hps.AUTO
    assert hps.resolve("reinforcement", {"sampler": "engine"}, 8).sampler == hps.SAMPLER_ENGINE
    # "auto" is the worker's to decide, and stays "auto" in the job's hyperparameters
    assert hps.resolve("reinforcement", {}, 8).as_dict()["sampler"] == hps.AUTO
    assert "sampler" not in hps.resolve("supervised", {}, 8).as_dict()
    for method, value in (("reinforcement", "vllm"), ("reinforcement", 1), ("supervised", "engine")):
        with pytest.raises(TailorError) as err:
            hps.validate(method, {"sampler": value})
        assert (err.value.status, err.value.param) == (400, "hyperparameters.sampler")


def test_a_smaller_student_has_a_learning_rate_of_its_own_that_the_multiplier_scales() -> None:
    full = {"finetuning_type": "full"}
    student = hps.resolve("distillation", full, 80, student=True)
    assert student.learning_rate == hps.STUDENT_LEARNING_RATE >= 10 * hps.FULL_LEARNING_RATE["distillation"]
    doubled = hps.resolve("distillation", {**full, "learning_rate_multiplier": 2}, 80, student=True)
    assert doubled.learning_rate == pytest.approx(2 * hps.STUDENT_LEARNING_RATE)
    # What the job shows: the multiplier, which means the student's rate on the student's job.
    assert doubled.as_dict()["learning_rate_multiplier"] == 2.0 and "learning_rate" not in doubled.as_dict()
    # A whole model that keeps all its layers, and any adapter, keep their own rates.
    assert hps.resolve("distillation", full, 80).learning_rate == hps.FULL_LEARNING_RATE["distillation"]
    assert hps.resolve("distillation", {}, 80, student=True).learning_rate == hps.BASE_LEARNING_RATE["distillation"]
    assert hps.resolve("supervised", full, 80, student=True).learning_rate == hps.FULL_LEARNING_RATE["supervised"]
