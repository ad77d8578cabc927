"""Model selection (trainer.selection): which candidate bases a job may name, the figures of
each candidate, and the gate's choice among them. The worker's side: tests/trainer/test_worker_selection.py;
the API's: tests/gateway/test_model_selection_api.py; live: tests/integration/test_derived_model_engine.py."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from core.config import Settings
from core.db import Database
from core.errors import TailorError
from tests.dbutil import migrated, sqlite_url
from tests.trainer.job_world import add_tenant, queue_job
from trainer import hyperparameters, job_base, job_queue
from trainer.compute.recipe import TrainingCancelled, TrainingPaused, TrainResult
from trainer.datasets import Snapshot
from trainer.evaluate import Comparison, Metrics, Served
from trainer.gates import Decision, GateConfig
from trainer.jobs import JobInfo, cancel_job, pause_job
from trainer.report import Report, report_dict
from trainer.selection import CandidateFigures, check_candidates, choose, cost_per_1k, figures
from trainer.worker import selecting
from trainer.worker.job_run import JobRun


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    bases = {
        "big": {"path": str(tmp_path / "big")},
        "small": {"path": str(tmp_path / "small")},
        "tiny": {"path": str(tmp_path / "tiny")},
        "remote": {"engine_urls": ["http://remote:8000"]},
    }
    return Settings(
        data_dir=tmp_path,
        base_models=json.loads(json.dumps(bases)),
        prices={"big": {"prompt": 0.2, "completion": 0.4}, "small": {"prompt": 0.1, "completion": 0.2}},
    )


def _refused(
    settings: Settings, given: Any, *, model: str = "big", method: str = "supervised", full: bool = False
) -> dict[str, Any]:
    with pytest.raises(TailorError) as caught:
        check_candidates(settings, given, model=model, method=method, full=full)
    assert caught.value.status == 400 and caught.value.param == "candidate_models"
    return {"code": caught.value.code, "message": caught.value.message}


def test_configured_bases_with_a_checkpoint_are_candidates(settings: Settings) -> None:
    for method in ("supervised", "dpo", "kto"):
        bases = check_candidates(settings, ["small", "big"], model="big", method=method, full=False)
        assert [b.name for b in bases] == ["small", "big"]


@pytest.mark.parametrize(
    ("given", "code", "words"),
    [
        ("big,small", "invalid_candidate_models", "a list"),
        ([1, 2], "invalid_candidate_models", "a list"),
        (["big"], "invalid_candidate_models", "2 to 4"),
        (["big", "small", "tiny", "big2", "x"], "invalid_candidate_models", "2 to 4"),
        (["big", "big"], "invalid_candidate_models", "twice"),
        (["big", "nope"], "unknown_base_model", "not a configured base"),
        (["big", "/etc/passwd"], "unknown_base_model", "not a configured base"),
        (["big", "../small"], "unknown_base_model", "not a configured base"),
        (["big", "http://169.254.169.254/latest"], "unknown_base_model", "not a configured base"),
        (["big", "someone-else:adapter@v1"], "unknown_base_model", "not a configured base"),
        (["big", "remote"], "unsupported_base_model", "no local checkpoint"),
        (["small", "tiny"], "invalid_candidate_models", "must be one of"),
    ],
)
def test_abuse_is_refused_naming_the_field(settings: Settings, given: Any, code: str, words: str) -> None:
    refused = _refused(settings, given)
    assert refused["code"] == code and words in refused["message"]
    # A name that is not a base is never echoed back (it may be a path, a URL, another's adapter).
    assert "passwd" not in refused["message"] and "169.254" not in refused["message"]


@pytest.mark.parametrize(("method", "full"), [("reinforcement", False), ("distillation", False), ("supervised", True)])
def test_only_lora_methods_that_train_on_any_base_select(settings: Settings, method: str, full: bool) -> None:
    refused = _refused(settings, ["big", "small"], method=method, full=full)
    assert refused["code"] == "unsupported_base_model"


# --------------------------------------------------------------------------- the choice


def _row(
    base: str, quality: float | None, cost: float, *, passed: bool = True, metric: str = "exact_match"
) -> CandidateFigures:
    return CandidateFigures(base, metric, quality, passed, cost, 0.1, 10.0, 5.0)


def test_the_best_passing_candidate_wins() -> None:
    rows = [_row("big", 0.9, 2.0, passed=False), _row("small", 0.6, 1.0), _row("tiny", 0.5, 0.5)]
    choice = choose(rows, GateConfig())
    assert rows[choice.winner].base == "small" and "best on exact_match" in choice.reason


def test_within_the_gates_tolerance_the_cheaper_wins() -> None:
    gates = GateConfig.from_dict({"noise": {"exact_match": 0.05}})
    rows = [_row("big", 0.80, 2.0), _row("small", 0.76, 1.0), _row("tiny", 0.70, 0.1)]
    choice = choose(rows, gates)
    assert rows[choice.winner].base == "small"
    assert "tolerance (0.05)" in choice.reason and "cheapest" in choice.reason
    # Outside the tolerance the better one wins however cheap the other.
    assert rows[choose(rows, GateConfig.from_dict({"noise": {"exact_match": 0.01}})).winner].base == "big"


def test_a_tie_on_quality_and_cost_keeps_the_first_named() -> None:
    rows = [_row("small", 0.5, 1.0), _row("big", 0.5, 1.0)]
    assert choose(rows, GateConfig()).winner == 0


def test_perplexity_is_lower_is_better_and_relative() -> None:
    gates = GateConfig.from_dict({"primary_metric": "perplexity", "noise": {"perplexity_ratio": 0.1}})
    rows = [_row("big", 10.0, 2.0, metric="perplexity"), _row("small", 10.9, 1.0, metric="perplexity")]
    assert rows[choose(rows, gates).winner].base == "small"  # within 10% of the best, cheaper
    rows = [_row("big", 10.0, 2.0, metric="perplexity"), _row("small", 11.5, 1.0, metric="perplexity")]
    assert rows[choose(rows, gates).winner].base == "big"


def test_with_none_passing_the_best_is_kept_to_be_rejected() -> None:
    rows = [_row("big", 0.2, 2.0, passed=False), _row("small", None, 0.0, passed=False)]
    choice = choose(rows, GateConfig())
    assert rows[choice.winner].base == "big" and "none passing the gate" in choice.reason
    # Equally bad: the cheaper is kept.
    rows = [_row("big", 0.0, 2.0, passed=False), _row("small", 0.0, 1.0, passed=False)]
    choice = choose(rows, GateConfig())
    assert rows[choice.winner].base == "small" and "none passing the gate" in choice.reason


def test_cost_per_1k_requests_from_the_bases_price() -> None:
    # 1000 requests of 30 prompt and 10 completion tokens at 0.1 / 0.2 per 1K tokens.
    assert cost_per_1k({"prompt": 0.1, "completion": 0.2}, 30, 10) == pytest.approx(5.0)
    assert cost_per_1k(None, 30, 10) == 0.0


def _comparison(em: float, served: Served | None) -> Comparison:
    cand = Metrics(n=4, exact_match=em, token_f1=em, perplexity=math.inf, win_rate=None)
    base = Metrics(n=4, exact_match=0.0, token_f1=0.0, perplexity=3.0, win_rate=None)
    return Comparison(cand, base, [], served)


def test_figures_and_the_reports_table(settings: Settings) -> None:
    gates = GateConfig()
    small = figures(settings.base("small"), _comparison(0.5, Served(0.25, 30.0, 10.0)), True, gates, settings)  # type: ignore[arg-type]
    remote = figures(settings.base("tiny"), _comparison(0.5, None), False, gates, settings)  # type: ignore[arg-type]
    assert small.cost_per_1k == pytest.approx(5.0) and small.p50_latency_s == 0.25
    assert remote.cost_per_1k == 0.0 and remote.p50_latency_s is None  # unpriced, not measured
    choice = choose([small, remote], gates)
    table = [r.row(i == choice.winner) for i, r in enumerate([small, remote])]
    selection = {"chosen": "small", "reason": choice.reason, "candidates": table}
    report = report_dict(Report("ftjob-1", [1.0], _comparison(0.5, None), Decision(True, ["ok"]), selection=selection))
    json.dumps(report, allow_nan=False)  # strict JSON
    assert report["model_selection"]["candidates"] == [
        {
            "base_model": "small",
            "metric": "exact_match",
            "quality": 0.5,
            "gate_passed": True,
            "cost_per_1k_requests": 5.0,
            "p50_latency_s": 0.25,
            "mean_prompt_tokens": 30.0,
            "mean_completion_tokens": 10.0,
            "chosen": True,
        },
        {
            "base_model": "tiny",
            "metric": "exact_match",
            "quality": 0.5,
            "gate_passed": False,
            "cost_per_1k_requests": 0.0,
            "p50_latency_s": None,
            "mean_prompt_tokens": None,
            "mean_completion_tokens": None,
            "chosen": False,
        },
    ]
    # A job without candidates has no such table.
    plain = report_dict(Report("j", [], _comparison(0.5, None), Decision(True, [])))
    assert "model_selection" not in plain


def test_served_figures_are_the_median_and_means() -> None:
    served = Served.measure([0.3, 0.1, 0.2, 10.0], [10, 20, 30, 40], [1, 2, 3, 4])
    assert served.p50_latency_s == pytest.approx(0.25)
    assert (served.mean_prompt_tokens, served.mean_completion_tokens) == (25.0, 2.5)


# --------------------------------------------------------------------------- the worker's stage


class _Worker:
    """What trainer.worker.selecting reads of a worker; each candidate's evaluation is faked."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db, self.worker_id = settings, db, "w1"
        self.events: list[tuple[str, dict[str, Any] | None]] = []

    def event(self, job: JobInfo, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        self.events.append((message, data))


def _fake_evaluations(monkeypatch: pytest.MonkeyPatch, w: _Worker, exact: dict[str, float]) -> list[JobInfo]:
    """Each candidate scores `exact[base]`; the job views the candidates trained as are returned."""
    seen: list[JobInfo] = []

    def evaluated(w: _Worker, run: JobRun, *_args: Any, **_kw: Any) -> selecting.Trained:
        seen.append(run.job)
        base = job_base.job_base(w.settings, run.job.config)
        result = cast(TrainResult, SimpleNamespace(steps=2, trained_tokens=100))
        comparison = _comparison(exact[base.name], Served(0.1, 30.0, 10.0))
        return selecting.Trained(base, result, comparison, Decision(exact[base.name] > 0, []), 100)

    monkeypatch.setattr(selecting, "_evaluated", evaluated)
    return seen


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Iterator[tuple[_Worker, JobRun, str]]:
    db = migrated(sqlite_url(tmp_path))
    tenant = add_tenant(db, "acme")
    queue_job(db, tenant, model="small", config={"base_model": "small", "candidate_models": ["small", "big"]})
    job = job_queue.claim_next(db, "w1")
    assert job is not None
    yield _Worker(settings, db), JobRun(job=job, workdir=tmp_path / "run"), tenant
    db.dispose()


def _select(w: _Worker, run: JobRun) -> selecting.Trained:
    hp = cast(hyperparameters.Resolved, None)
    return selecting.train_and_evaluate(w, run, cast(Snapshot, None), hp, None, None, GateConfig())  # type: ignore[arg-type]


def test_the_worker_trains_each_candidate_on_its_base_and_keeps_one(
    monkeypatch: pytest.MonkeyPatch, world: tuple[_Worker, JobRun, str]
) -> None:
    w, run, _ = world
    seen = _fake_evaluations(monkeypatch, w, {"small": 0.25, "big": 0.75})
    trained = _select(w, run)
    # Each candidate's job view names its base (the default one by leaving it out), in its own directory.
    assert [j.config for j in seen] == [
        {"base_model": "small", "candidate_models": ["small", "big"]},
        {"candidate_models": ["small", "big"]},
    ]
    assert trained.base.name == "big" and trained.trained_tokens == 200
    assert trained.model_selection is not None and trained.model_selection["chosen"] == "big"
    assert [r["chosen"] for r in trained.model_selection["candidates"]] == [False, True]
    messages = [m for m, _ in w.events]
    assert messages[-1].startswith("Chose base model big: big is the best on exact_match")
    assert sum(m.startswith("Candidate ") and "p50 latency" in m for m in messages) == 2


@pytest.mark.parametrize(("ask", "raised"), [(cancel_job, TrainingCancelled), (pause_job, TrainingPaused)])
def test_cancel_and_pause_stop_the_job_between_candidates(
    monkeypatch: pytest.MonkeyPatch, world: tuple[_Worker, JobRun, str], ask: Any, raised: type[Exception]
) -> None:
    w, run, tenant = world
    seen = _fake_evaluations(monkeypatch, w, {"small": 0.25, "big": 0.75})
    original = selecting._evaluated

    def then_ask(*args: Any, **kw: Any) -> selecting.Trained:
        ask(w.db, tenant, run.job.id, actor="test")
        return original(*args, **kw)

    monkeypatch.setattr(selecting, "_evaluated", then_ask)
    with pytest.raises(raised):
        _select(w, run)
    assert len(seen) == 1  # the second candidate never trained
