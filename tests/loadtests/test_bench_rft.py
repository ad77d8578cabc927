"""loadtests.bench_rft's pure parts: the generated tasks are valid reinforcement rows with
graders the job accepts, the split keeps unseen questions unseen, and the report's figures."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from loadtests import bench_rft
from trainer.files.parsing import parse_jsonl
from trainer.graders import Capabilities, GradingContext
from trainer.rewards import check_grader, reward_for


async def rewards(grader: dict[str, Any], answers: list[str], rows: list[dict[str, Any]]) -> list[float]:
    return (await reward_for(grader, GradingContext()).scores(answers, rows)).rewards


@pytest.mark.parametrize("name", bench_rft.TASKS)
def test_rows_are_reinforcement_rows_and_the_grader_is_accepted(name: str) -> None:
    task = bench_rft.FORMAT_TASKS[name]
    train, heldout = bench_rft.split_rows(task, 8)
    assert len(heldout) == 8 and len(train) == len(bench_rft.questions()) - 8
    parsed = parse_jsonl(bench_rft.jsonl(train))  # what the upload checks
    assert parsed.kind == "prompts" and len(parsed.records) == len(train)
    assert check_grader(task.grader, Capabilities()) == task.grader


async def test_the_graders_score_the_format_not_the_prose() -> None:
    prefix = bench_rft.FORMAT_TASKS["prefix"].grader
    assert await rewards(prefix, ["ANSWER: Green", "The colour of grass is green."], [{}, {}]) == [1.0, 0.0]
    codeword = bench_rft.FORMAT_TASKS["codeword"]
    row = codeword.row("What colour is grass?", 3)
    assert row["code"] in row["messages"][-1]["content"]
    other = next(code for code in bench_rft.CODE_WORDS if code != row["code"])
    answers = [f"{row['code']}. Green.", "Green.", other]
    assert await rewards(codeword.grader, answers, [row, row, row]) == [1.0, 0.0, 0.0]


async def test_a_demonstration_shows_the_format_in_the_wrong_case() -> None:
    task = bench_rft.FORMAT_TASKS["codeword_case"]
    row = task.row("What colour is grass?", 3)
    *shown, asked = row["messages"]
    assert [m["role"] for m in shown] == ["user", "assistant"] and asked["role"] == "user"
    assert "oak" in shown[1]["content"] and row["code"] in asked["content"]
    assert shown[0]["content"] not in bench_rft.questions()  # no question is shown before it is asked
    assert await rewards(task.grader, [row["code"].lower(), row["code"]], [row, row]) == [0.0, 1.0]
    ok = bench_rft.FORMAT_TASKS["ok_case"]
    assert ok.demonstration is not None
    assert await rewards(ok.grader, [ok.demonstration.answer, "OK: Blue."], [{}, {}]) == [0.0, 1.0]
    every_other = replace(ok, demonstration=bench_rft.Demonstration("Name a colour.", "OK: Blue.", every=2))
    assert [len(every_other.row("Q?", i)["messages"]) for i in range(3)] == [4, 2, 4]


def test_unseen_questions_are_never_trained_on() -> None:
    questions = bench_rft.questions()
    assert len(set(questions)) == len(questions)
    task = bench_rft.FORMAT_TASKS["prefix"]
    train, heldout = bench_rft.split_rows(task, 16)
    asked = {json.dumps(r["messages"]) for r in train}
    assert not asked & {json.dumps(r["messages"]) for r in heldout}
    assert bench_rft.split_rows(task, 16) == (train, heldout)  # reproducible
    with pytest.raises(ValueError):
        bench_rft.split_rows(task, len(questions))


def _event(step: int, reward: float, second: int) -> SimpleNamespace:
    at = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()) + second
    return SimpleNamespace(data={"step": step, "train_loss": 0.0, "mean_reward": reward}, created_at=at)


def test_reward_events_and_the_table() -> None:
    prose = SimpleNamespace(data=None, created_at=0)
    events = [_event(2, 0.5, 30), prose, _event(1, 0.125, 10), _event(3, 0.875, 50)]  # newest first or not
    rewards, seconds = bench_rft.reward_events(events)
    assert (rewards, seconds) == ([0.125, 0.5, 0.875], 40.0)
    assert bench_rft.reward_events([prose]) == ([], None)
    args = bench_rft.parse_args(["--steps", "30"])
    result = bench_rft.TaskResult("prefix", "ftjob-1", "succeeded", 32, 16, 3, 0.125, 0.875, "promoted", 300.0, 40.0)
    report = bench_rft.Report(bench_rft.hyperparameters_of(args), [result], 420.0)
    table = bench_rft.rows_table(report)
    assert "| prefix | 32 / 16 | 3 | 0.125 | 0.875 | promoted | 40 | 300 |" in table
    assert '"max_steps": 30' in table and "met on 1 of 1 task(s)" in table
    quick = bench_rft.parse_args(["--quick"])
    assert (quick.task, quick.steps, quick.heldout) == (["prefix"], 2, 4)
