"""trainer.rewards: a job's grader checked at creation and run as the reward."""

from __future__ import annotations

import pytest

from core.errors import TailorError
from tests.trainer.string_check_cases import STRING_CHECK_CASES
from trainer.rewards import check_grader, mean_score, render, reward_for

GRADER = {
    "type": "string_check",
    "name": "label",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}


def test_templates_read_the_answer_and_the_rows_fields() -> None:
    item = {"label": "BILL-7", "meta": {"queue": "billing"}, "n": 3}
    assert render("{{sample.output_text}}/{{ item.meta.queue }}/{{ item.n }}", "hi", item) == "hi/billing/3"
    assert render("[{{ item.missing }}][{{ item.label.deeper }}]", "hi", item) == "[][]"


@pytest.mark.parametrize(("operation", "answer", "reference", "score"), STRING_CHECK_CASES)
def test_string_check_operations(operation: str, answer: str, reference: str, score: float) -> None:
    reward = reward_for({**GRADER, "operation": operation})
    assert reward([answer], [{"label": reference}]) == [score]


def test_scores_follow_their_rows_and_average() -> None:
    reward = reward_for(GRADER)
    answers, items = ["A", "B", "C", "D"], [{"label": "A"}, {"label": "x"}, {"label": "C"}, {"label": "D"}]
    assert reward(answers, items) == [1.0, 0.0, 1.0, 1.0]
    assert mean_score(reward, answers, items) == 0.75
    with pytest.raises(ValueError):
        reward(answers, items[:3])  # a score per answer and its own row, never shifted


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        (None, "method.reinforcement.grader"),
        ("string_check", "method.reinforcement.grader"),
        ({**GRADER, "type": "score_model"}, "method.reinforcement.grader.type"),
        ({**GRADER, "operation": "regex"}, "method.reinforcement.grader.operation"),
        ({**GRADER, "name": ""}, "method.reinforcement.grader.name"),
        ({**GRADER, "input": 3}, "method.reinforcement.grader.input"),
        ({**GRADER, "input": "{{ item }}"}, "method.reinforcement.grader.input"),
        ({**GRADER, "reference": "{{ sample.output_json }}"}, "method.reinforcement.grader.reference"),
        ({**GRADER, "reference": "x" * 5000}, "method.reinforcement.grader.reference"),
        ({**GRADER, "source": "import os"}, "method.reinforcement.grader.source"),
    ],
)
def test_bad_graders_are_400_naming_the_field(spec: object, param: str) -> None:
    with pytest.raises(TailorError) as e:
        check_grader(spec)
    assert (e.value.status, e.value.param) == (400, param)


def test_the_stored_grader_is_the_checked_fields() -> None:
    assert check_grader(dict(GRADER)) == GRADER
