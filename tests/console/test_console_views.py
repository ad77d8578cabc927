"""The console's data shaping (gateway.console.views) and its session and CSRF rules
(gateway.console.auth), without a server."""

from __future__ import annotations

import math
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from core.config import Settings
from gateway.console import auth, views
from gateway.console.queries import prompt_excerpt
from gateway.usage import UsageRow
from trainer.feedback import FeedbackSignal
from trainer.job_records import EvaluationInfo, EventInfo
from trainer.jobs import JobInfo

NOW = datetime(2024, 3, 1, tzinfo=timezone.utc)


def event(i: int, data: dict | None) -> EventInfo:  # type: ignore[type-arg]
    return EventInfo(id=i, job_id="j", level="info", message="m", data=data, created_at=NOW)


def job(**fields: object) -> JobInfo:
    values: dict[str, object] = dict(
        id="ftjob-1", tenant_id="t", status="running", method="supervised", model="base", adapter_name="a",
        suffix=None, training_file=None, validation_file=None, dataset_id=None, hyperparameters={}, config=None,
        seed=0, source="api", fine_tuned_model=None, result_version_id=None, decision=None, metrics=None,
        error=None, trained_tokens=None, cancel_requested=False, attempts=1, worker_id="w", heartbeat_at=None,
        created_at=NOW, started_at=NOW, finished_at=None,
    )  # fmt: skip
    values.update(fields)
    return JobInfo(**values)  # type: ignore[arg-type]


def row(tenant: str, day: str | None, model: str | None, **fields: float | None) -> UsageRow:
    values: dict[str, object] = dict(
        tenant=tenant, day=day, model=model, adapter_version=None, tier=None, requests=1, errors=0, client_closed=0,
        prompt_tokens=10, completion_tokens=5, p50_latency_ms=None, p95_latency_ms=None, p50_ttft_ms=None, cost=0.5,
    )  # fmt: skip
    values.update(fields)
    return UsageRow(**values)  # type: ignore[arg-type]


def test_loss_chart_orders_steps_and_keeps_the_latest_value_of_a_retried_step() -> None:
    events = [
        event(1, {"method": "supervised"}),
        event(3, {"step": 2, "train_loss": 0.8}),
        event(2, {"step": 1, "train_loss": 1.0}),
        event(4, {"step": 1, "train_loss": 0.95}),  # the job was retried
        event(5, {"step": 3, "train_loss": float("nan")}),
        event(6, {"step": True, "train_loss": 0.1}),  # not a step number
    ]
    spec = views.loss_chart(events)
    assert spec is not None
    assert spec["labels"] == [1, 2, 3] and spec["datasets"][0]["data"] == [0.95, 0.8, None]
    assert (spec["type"], spec["x_label"], spec["y_label"]) == ("line", "step", "loss")
    assert views.loss_chart([event(1, None)]) is None


def test_progress_sentence() -> None:
    p = views.progress(job(), [event(1, {"step": 3, "total_steps": 40, "train_loss": 0.51234})])
    assert p.running and p.sentence == "Status: running, step 3 of 40, training loss 0.5123."
    done = views.progress(job(status="succeeded"), [])
    assert not done.running and done.sentence == "Status: succeeded."


def test_evaluation_view_side_by_side() -> None:
    ev = EvaluationInfo(
        id="e", tenant_id="t", job_id="j", candidate_version_id="c", baseline_version_id=None, dataset_id=None,
        candidate_metrics={"n": 4, "exact_match": 0.5, "token_f1": 0.7, "perplexity": 3.0, "win_rate": None},
        baseline_metrics={"n": 4, "exact_match": 0.5, "token_f1": 0.6, "perplexity": 2.0, "win_rate": None},
        decision="rejected", reasons=["worse perplexity"], report_key=None, created_at=NOW,
    )  # fmt: skip
    view = views.evaluation_view(ev)
    assert view.quality["labels"] == ["Exact match", "Token F1"]  # no judge: no win-rate bars
    assert view.quality["datasets"] == [
        {"label": "Baseline", "data": [0.5, 0.6]},
        {"label": "Candidate", "data": [0.5, 0.7]},
    ]
    assert view.perplexity is not None and view.perplexity["datasets"][1]["data"] == [3.0]
    assert [(r.label, r.verdict) for r in view.rows] == [
        ("Exact match", "same"),
        ("Token F1", "better"),
        ("Perplexity", "worse"),  # lower is better
    ]
    assert view.n == 4


def test_differing_examples() -> None:
    report = {
        "examples": [
            {"candidate_output": "a", "baseline_output": "b"},
            {"candidate_output": "same", "baseline_output": "same"},
            "not an example",
        ]
    }
    assert views.differing_examples(report) == [{"candidate_output": "a", "baseline_output": "b"}]
    assert views.differing_examples(None) == [] and views.differing_examples({"examples": "x"}) == []


def test_distillation_view_only_for_distillation_jobs() -> None:
    results = {"prompt_tokens_saved_per_request": 840.0, "teacher_agreement_exact": 0.8}
    view = views.distillation_view(job(method="distillation", metrics={"distillation": results}))
    assert view is not None and view["prompt_tokens_saved_per_request"] == 840.0
    assert view["teacher_agreement_f1"] is None
    assert views.distillation_view(job(metrics={"distillation": results})) is None


def test_cost_and_token_series_per_day() -> None:
    days = views.day_labels(date(2024, 3, 1), date(2024, 3, 3))
    assert days == ["2024-03-01", "2024-03-02", "2024-03-03"]
    rows = [
        row("acme", "2024-03-01", "support", cost=1.0),
        row("acme", "2024-03-03", "support", cost=2.0, prompt_tokens=100, completion_tokens=50),
        row("beta", "2024-03-02", "base", cost=0.25),
        row("beta", "2024-02-28", "base", cost=9.0),  # outside the range
    ]
    cost, tokens = views.cost_charts(rows, days, with_tenant=True)
    assert cost["stacked"] and cost["type"] == "bar"
    assert cost["datasets"] == [
        {"label": "acme/support", "data": [1.0, 0, 2.0]},
        {"label": "beta/base", "data": [0, 0.25, 0]},
    ]
    assert tokens["datasets"][0] == {"label": "acme/support", "data": [15, 0, 150]}
    single, _ = views.cost_charts(rows[:2], days, with_tenant=False)
    assert [d["label"] for d in single["datasets"]] == ["support"]


def test_latency_series_leave_gaps_for_days_without_answers() -> None:
    days = ["2024-03-01", "2024-03-02"]
    spec = views.latency_chart(
        [row("acme", "2024-03-01", None, p50_latency_ms=10.0, p95_latency_ms=30.0)], days, with_tenant=False
    )
    assert spec["datasets"] == [{"label": "p50", "data": [10.0, None]}, {"label": "p95", "data": [30.0, None]}]


def test_signal_chart_and_summaries() -> None:
    s = FeedbackSignal(judged=4, good=3, bad=1, corrections=0, share_good=0.75, correction_rate=0.0)
    none = FeedbackSignal(judged=0, good=0, bad=0, corrections=0, share_good=None, correction_rate=None)
    spec = views.signal_chart({"support v1": [s, none]}, ["d1", "d2"])
    assert spec["datasets"] == [{"label": "support v1", "data": [0.75, None]}] and spec["y_max"] == 1
    sums = views.summaries_by_tenant([row("acme", None, None, cost=0.1), row("acme", None, None, cost=0.2)])
    assert sums["acme"].requests == 2 and sums["acme"].tokens == 30 and math.isclose(sums["acme"].cost, 0.3)


def test_savings() -> None:
    s = views.Savings("acme", "faq", 1, "j", saved_per_request=800.0, requests=10, prompt_price_per_1k=0.5)
    assert s.tokens_saved == 8000 and s.cost_saved == 4.0


def test_prompt_excerpt() -> None:
    request = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": [{"text": "hi"}]}]}
    assert prompt_excerpt(request, None) == "hi"
    assert prompt_excerpt({}, [{"role": "user", "content": "imported"}]) == "imported"
    assert prompt_excerpt({"prompt": "x" * 500}, None, limit=10) == "x" * 9 + "…"


def test_formatting() -> None:
    assert views.fmt_int(1234.4) == "1,234" and views.fmt_int(None) == "–"
    assert views.fmt_pct(0.756) == "76%" and views.fmt_ms(1234.5) == "1,234 ms"
    assert views.fmt_cost(0.00123) == "0.0012" and views.fmt_cost(12.5) == "12.50"


# --- sessions ---------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, admin_key="adm", secret_key="s3cret")


def test_signing_key_without_a_secret_uses_the_data_dir_key_file(tmp_path: Path) -> None:
    a = auth.signing_key(Settings(data_dir=tmp_path))
    assert (tmp_path / "secret.key").exists() and a == auth.signing_key(Settings(data_dir=tmp_path))
    assert a != auth.signing_key(Settings(data_dir=tmp_path, secret_key="x"))


def test_csrf_and_login_tokens(settings: Settings) -> None:
    auth.check_csrf("abc", "abc")
    for given in (None, "", "abd"):
        with pytest.raises(Exception, match="form has expired"):
            auth.check_csrf("abc", given)
    token, signed = auth.new_login_token(settings)
    assert auth.check_login_token(settings, signed, token)
    assert not auth.check_login_token(settings, signed, token + "x")
    assert not auth.check_login_token(settings, None, token)
