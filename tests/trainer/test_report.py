"""trainer.report: the JSON content (strict JSON, changed examples first, capped) and
that a real PNG is written, with and without a judge, with and without losses, and a
reinforcement job's reward curve (from its step events) in both."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from trainer.evaluate import Comparison, ExampleResult, Metrics
from trainer.gates import GateConfig, decide
from trainer.report import MAX_EXAMPLES, Report, RewardPoint, reward_curve, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_comparison(n: int, win: float | None, ppl: float = 9.2) -> Comparison:
    examples = [
        ExampleResult(
            prompt_text=f"User: question {i}",
            reference=f"answer {i}",
            candidate_output=f"answer {i}",
            baseline_output=f"answer {i}" if i % 3 else f"wrong {i}",  # every third changed
            candidate_f1=1.0,
            baseline_f1=1.0 if i % 3 else 0.5,
            candidate_exact=True,
            baseline_exact=bool(i % 3),
            judge="candidate" if i % 3 == 0 else "tie",
        )
        for i in range(n)
    ]
    judged = n if win is not None else 0
    return Comparison(
        candidate=Metrics(n, 0.9, 0.93, ppl, win, judged),
        baseline=Metrics(n, 0.6, 0.71, 12.4, None if win is None else 1 - win, judged),
        examples=examples,
    )


def test_report_json_and_png(tmp_path: Path) -> None:
    cmp = make_comparison(120, win=0.68)
    decision = decide(cmp, GateConfig())
    losses = [0.69 * math.exp(-i / 15) + 0.02 * math.sin(i) for i in range(60)]
    json_path, png_path = write_report(tmp_path / "job", Report("ftjob-abc", losses, cmp, decision))
    assert (json_path.name, png_path.name) == ("report.json", "report.png")
    data = json.loads(json_path.read_text())
    assert data["job_id"] == "ftjob-abc"
    assert data["decision"] == {"promote": True, "reasons": decision.reasons}
    assert data["metrics"]["candidate"]["win_rate"] == 0.68
    assert data["metrics"]["delta"]["exact_match"] == pytest.approx(0.3)
    assert data["metrics"]["delta"]["perplexity_ratio"] == pytest.approx(9.2 / 12.4)
    assert data["training"]["steps"] == 60 and data["training"]["final_loss"] == losses[-1]
    assert (data["examples_total"], data["examples_changed"]) == (120, 40)
    shown = data["examples"]
    assert len(shown) == MAX_EXAMPLES
    assert all(e["changed"] for e in shown[:40]) and not any(e["changed"] for e in shown[40:])
    assert shown[0]["index"] == 0 and shown[0]["baseline_output"] == "wrong 0"
    assert shown[0]["judge"] == "candidate"
    png = png_path.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    assert sorted(os.listdir(tmp_path / "job")) == ["report.json", "report.png"]  # no temp files


def test_report_without_judge_losses_or_finite_perplexity(tmp_path: Path) -> None:
    cmp = make_comparison(3, win=None, ppl=math.inf)
    decision = decide(cmp, GateConfig())
    json_path, png_path = write_report(tmp_path, Report("ftjob-empty", [], cmp, decision))
    text = json_path.read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON
    data = json.loads(text)
    assert data["metrics"]["candidate"]["perplexity"] is None
    assert data["metrics"]["candidate"]["win_rate"] is None
    assert data["training"] == {"steps": 0, "losses": [], "final_loss": None}
    assert data["decision"]["promote"] is False
    assert png_path.read_bytes().startswith(PNG_MAGIC)
    # writing again replaces the files
    write_report(tmp_path, Report("ftjob-empty", [1.0], cmp, decision))
    assert json.loads(json_path.read_text())["training"]["steps"] == 1


def test_reward_curve_from_step_events() -> None:
    events = [
        {"step": 2, "train_loss": 0.1, "mean_reward": 0.5, "reward_std": 0.2, "kl": 0.01},
        None,  # a prose event
        {"step": 1, "train_loss": 0.2, "mean_reward": 0.25, "reward_std": 0.1, "kl": 0.0},
        {"step": 1, "train_loss": 0.3},  # another method's step: no reward
        {"validation": {"step": 2}},
        {"step": 2, "train_loss": 0.1, "mean_reward": 0.75},  # step 2 again (a resumed run): the last report wins
    ]
    assert reward_curve(events) == [RewardPoint(1, 0.25, 0.1, 0.0), RewardPoint(2, 0.75, None, None)]
    assert reward_curve([]) == []


def test_a_reinforcement_report_has_its_reward_curve(tmp_path: Path) -> None:
    graded = Comparison(
        candidate=Metrics(8, 0.0, 0.0, math.nan, None, grader_score=0.875),
        baseline=Metrics(8, 0.0, 0.0, math.nan, None, grader_score=0.125),
    )
    decision = decide(graded, GateConfig())
    rewards = [RewardPoint(s, min(1.0, 0.1 * s), 0.3, 0.002 * s) for s in range(1, 13)]
    sft = Report("ftjob-rft", [0.0] * 12, graded, decision)
    json_path, png_path = write_report(tmp_path / "rft", replace(sft, rewards=rewards))
    training = json.loads(json_path.read_text())["training"]
    assert [p["step"] for p in training["rewards"]] == list(range(1, 13))
    assert training["rewards"][2] == {"step": 3, "mean_reward": pytest.approx(0.3), "reward_std": 0.3, "kl": 0.006}
    assert training["final_mean_reward"] == 1.0
    with_curve = png_path.read_bytes()
    assert with_curve.startswith(PNG_MAGIC)
    # Without rewards (every other method) the report is as before: no reward keys, one panel fewer.
    json_path, png_path = write_report(tmp_path / "sft", sft)
    assert "rewards" not in json.loads(json_path.read_text())["training"]
    assert _png_width(png_path.read_bytes()) < _png_width(with_curve)


def _png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big")  # the IHDR chunk's width, right after the signature
