"""The cluster rehearsal, short: PostgreSQL, an S3-compatible store, two mock engines, two
gateways and a trainer worker on loopback, each fault injected while locust sends traffic through
both gateways (loadtests.rehearsal; `python -m loadtests.rehearsal --engine vllm` rehearses on
real engines). Also, without starting anything: how the trainer fault's figures are read from a
job's events, and the mock engine's prompt log-probabilities as the trainer's evaluation reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import pg_cluster, rehearsal
from loadtests.mock_engine import MockEngine
from loadtests.rehearsal_trainer import Event, JobState, KillFigures
from trainer.compute.encoding import IGNORE_INDEX, EncodedExample
from trainer.compute.engine import target_nll


def test_every_fault_is_survived(tmp_path: Path) -> None:
    if not (pg_cluster.PG_BIN / "pg_ctl").is_file():
        pytest.skip(f"PostgreSQL server binaries not found in {pg_cluster.PG_BIN}")
    if not (rehearsal.MODEL_DIR / "model.safetensors").is_file():
        pytest.skip(f"base model not prepared at {rehearsal.MODEL_DIR} (run `make model`): the trainer needs it")
    out = tmp_path / "verdicts.json"
    # Short: 3 s of traffic per fault, a 3-step job checkpointed at every step (killed at the
    # first), requeued 2 s after the kill.
    args = ["--seconds", "3", "--job-steps", "3", "--stale-after", "2", "--json", str(out)]
    code = rehearsal.main(args)
    verdicts = json.loads(out.read_text())
    assert [v["fault"] for v in verdicts] == [
        "promotion through gateway 1",
        "engine 1 killed (SIGKILL)",
        "trainer killed mid-job (SIGKILL)",
        "PostgreSQL restarted",
    ]
    assert code == 0, verdicts


def test_the_report_fails_what_failed() -> None:
    table = rehearsal.report([rehearsal.Verdict("a", "fine", True), rehearsal.Verdict("b", "2 failed", False)])
    assert table.splitlines()[2:] == ["| a | fine | PASS |", "| b | 2 failed | FAIL |"]


def _step(at: float, step: int) -> Event:
    return Event(at, f"Step {step}/9: training loss=1.0", {"step": step, "train_loss": 1.0})


def test_a_kill_reads_as_steps_redone_and_the_restart() -> None:
    before = [
        Event(0.0, "Job started on worker w1 (attempt 1)", {}),
        *(_step(float(s), s) for s in (1, 2, 3)),
        Event(3.1, "Checkpoint saved at step 3: callable as routing:ckpt-3", {"checkpoint_step": 3}),
        _step(3.4, 4),
        Event(13.0, "Worker w1 stopped sending heartbeats for over 10 s; requeued (attempt 1 of 2)", {}),
        Event(14.0, "Job started on worker w2 (attempt 2)", {}),
    ]
    said = "Resuming from the checkpoint of step 3 of 9 after the previous attempt stopped: 6 step(s) left"
    resumed = [*before, Event(19.0, said, {}), *(_step(20.0 + s, s) for s in range(4, 10))]
    figures = KillFigures(JobState("succeeded", 2, resumed), killed=3.5, orphans=2, orphans_gone_s=1.5)
    assert figures.passed
    assert figures.describe("a mock engine") == (
        "killed after step 4 (checkpoints then: [3]); restarted 10.5 s after the kill, training again 20.5 s after it "
        "from step 4: 1 step(s) redone; "
        "job succeeded on attempt 2; 2 process(es) below the killed worker gone 1.5 s after the kill; "
        "evaluated on a mock engine"
    )
    orphaned = KillFigures(JobState("succeeded", 2, resumed), killed=3.5, orphans=2, orphans_gone_s=None)
    assert not orphaned.passed
    started_over = [*before, *(_step(20.0 + s, s) for s in range(1, 10))]
    assert not KillFigures(JobState("succeeded", 2, started_over), killed=3.5, orphans=2, orphans_gone_s=1.5).passed
    silent = [*before, *(_step(20.0 + s, s) for s in range(4, 10))]
    assert not KillFigures(JobState("succeeded", 2, silent), killed=3.5, orphans=2, orphans_gone_s=1.5).passed
    never_restarted = KillFigures(JobState("running", 1, before[:6]), killed=3.5, orphans=0, orphans_gone_s=0.1)
    assert not never_restarted.passed and "never restarted" in never_restarted.describe("x")


def test_the_mock_engine_scores_prompts_as_the_trainers_evaluation_reads_them() -> None:
    reply = MockEngine("base", None).scored({"model": "base", "prompt": [5, 6, 7, 8], "prompt_logprobs": 0})
    encoded = EncodedExample(input_ids=[5, 6, 7, 8], labels=[IGNORE_INDEX, IGNORE_INDEX, 7, 8])
    assert target_nll(encoded, reply["choices"][0]["prompt_logprobs"]) == 2.0
