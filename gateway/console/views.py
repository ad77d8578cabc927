"""Shaping data for the console's pages: chart series, tables and summaries.

Pure functions over the values the JSON API's functions return (no database, no HTTP),
so what a chart shows is tested without a browser. A chart is a small JSON spec
(`chart()`), turned into a Chart.js configuration by static/console.js and into a data
table by the page itself, for readers who cannot see the canvas.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from typing import Any

from core.states import TERMINAL_JOB_STATUSES, JobStatus
from gateway import usage
from gateway.usage import UsageRow, UsageTotals
from trainer.feedback import FeedbackSignal
from trainer.job_records import EvaluationInfo, EventInfo
from trainer.jobs import JobInfo

Chart = dict[str, Any]

# The evaluation metrics shown side by side: (key in the metrics dict, label, higher is better).
QUALITY_METRICS = (("exact_match", "Exact match"), ("token_f1", "Token F1"), ("win_rate", "Judge win rate"))
MAX_EXAMPLES_SHOWN = 20


def chart(
    kind: str,
    labels: Sequence[Any],
    datasets: Iterable[tuple[str, Sequence[float | None]]],
    *,
    y_label: str,
    x_label: str = "",
    stacked: bool = False,
    y_min: float | None = None,
    y_max: float | None = None,
) -> Chart:
    """A chart spec: `kind` "line" or "bar", one series per (label, values aligned with labels)."""
    return {
        "type": kind,
        "labels": list(labels),
        "datasets": [{"label": label, "data": [_finite(v) for v in values]} for label, values in datasets],
        "x_label": x_label,
        "y_label": y_label,
        "stacked": stacked,
        "y_min": y_min,
        "y_max": y_max,
    }


def _finite(value: float | None) -> float | None:
    # NaN and infinities are not JSON; a gap in the line says "not measured".
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not step 1


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- jobs -----------------------------------------------------------------------------


def loss_chart(events: Iterable[EventInfo]) -> Chart | None:
    """Training loss by step from a job's metrics events; None before the first step.

    A job retried after a lost worker logs its steps again: the latest value of a step wins.
    """
    by_step: dict[int, float] = {}
    for e in sorted(events, key=lambda e: e.id):
        data = e.data or {}
        step, loss = data.get("step"), data.get("train_loss")
        if _is_int(step) and _is_number(loss):
            by_step[step] = float(loss)
    if not by_step:
        return None
    steps = sorted(by_step)
    return chart("line", steps, [("Training loss", [by_step[s] for s in steps])], y_label="loss", x_label="step")


@dataclass(frozen=True)
class Progress:
    status: JobStatus
    running: bool
    step: int | None
    total_steps: int | None
    loss: float | None

    @property
    def sentence(self) -> str:
        """The one line a screen reader hears when a polled job changes."""
        words = f"Status: {self.status.replace('_', ' ')}"
        if self.step is not None:
            words += f", step {self.step}" + (f" of {self.total_steps}" if self.total_steps else "")
        if self.loss is not None:
            words += f", training loss {self.loss:.4f}"
        return words + "."


def progress(job: JobInfo, events: Iterable[EventInfo]) -> Progress:
    latest = max((e for e in events if e.data and "train_loss" in e.data), key=lambda e: e.id, default=None)
    data = latest.data if latest is not None and latest.data else {}
    step, total, loss = data.get("step"), data.get("total_steps"), data.get("train_loss")
    return Progress(
        status=job.status,
        running=job.status not in TERMINAL_JOB_STATUSES,
        step=step if _is_int(step) else None,
        total_steps=total if _is_int(total) else None,
        loss=_finite(loss) if _is_number(loss) else None,
    )


@dataclass(frozen=True)
class MetricRow:
    label: str
    baseline: float | None
    candidate: float | None
    higher_is_better: bool

    @property
    def verdict(self) -> str:
        """ "better", "worse", "same" or "" (not measured on both)."""
        if self.baseline is None or self.candidate is None:
            return ""
        if math.isclose(self.candidate, self.baseline, abs_tol=1e-9):
            return "same"
        improved = self.candidate > self.baseline
        return "better" if improved == self.higher_is_better else "worse"


@dataclass(frozen=True)
class EvaluationView:
    decision: str
    reasons: list[str]
    rows: list[MetricRow]
    quality: Chart
    perplexity: Chart | None
    n: int | None


def _number(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return _finite(value) if _is_number(value) else None


def evaluation_view(ev: EvaluationInfo) -> EvaluationView:
    """Candidate against the version it would replace: quality bars on 0..1, perplexity apart
    (unbounded and lower is better, so it would squash the others on a shared axis)."""
    c, b = ev.candidate_metrics, ev.baseline_metrics
    shown = [(k, label) for k, label in QUALITY_METRICS if _number(c, k) is not None or _number(b, k) is not None]
    quality = chart(
        "bar",
        [label for _, label in shown],
        [("Baseline", [_number(b, k) for k, _ in shown]), ("Candidate", [_number(c, k) for k, _ in shown])],
        y_label="score (higher is better)",
        y_min=0,
        y_max=1,
    )
    ppl_b, ppl_c = _number(b, "perplexity"), _number(c, "perplexity")
    perplexity = None
    if ppl_b is not None or ppl_c is not None:
        perplexity = chart(
            "bar", ["Perplexity"], [("Baseline", [ppl_b]), ("Candidate", [ppl_c])], y_label="lower is better", y_min=0
        )
    rows = [MetricRow(label, _number(b, k), _number(c, k), True) for k, label in shown]
    rows.append(MetricRow("Perplexity", ppl_b, ppl_c, False))
    n = c.get("n") if isinstance(c.get("n"), int) else None
    return EvaluationView(ev.decision, list(ev.reasons), rows, quality, perplexity, n)


def differing_examples(report: Mapping[str, Any] | None, limit: int = MAX_EXAMPLES_SHOWN) -> list[dict[str, Any]]:
    """The report's examples where candidate and baseline answered differently (trainer.report)."""
    if not report or not isinstance(report.get("examples"), list):
        return []
    out = []
    for e in report["examples"]:
        if isinstance(e, dict) and e.get("candidate_output") != e.get("baseline_output"):
            out.append(e)
    return out[:limit]


def distillation_view(job: JobInfo) -> dict[str, Any] | None:
    """What distilling saved: prompt tokens per request, and how often it agrees with the teacher."""
    results = (job.metrics or {}).get("distillation")
    if job.method != "distillation" or not isinstance(results, dict):
        return None
    keys = (
        "prompt_tokens_with_context",
        "prompt_tokens_without_context",
        "prompt_tokens_saved_per_request",
        "prompt_tokens_saved_fraction",
        "teacher_agreement_exact",
        "teacher_agreement_f1",
        "baseline_agreement_exact",
    )
    return {k: results.get(k) for k in keys}


# --- cost and latency -----------------------------------------------------------------


def day_labels(since: date, until: date) -> list[str]:
    return [(since + timedelta(days=i)).isoformat() for i in range((until - since).days + 1)]


def series_name(row: UsageRow, *, with_tenant: bool) -> str:
    model = row.model or "(all models)"
    return f"{row.tenant}/{model}" if with_tenant else model


def per_day(
    rows: Iterable[UsageRow],
    days: Sequence[str],
    value: Callable[[UsageRow], float | None],
    name: Callable[[UsageRow], str],
) -> list[tuple[str, list[float | None]]]:
    """One series per name, a value per day (missing days: 0 for sums, by `value`'s choice)."""
    index = {d: i for i, d in enumerate(days)}
    series: dict[str, list[float | None]] = {}
    for row in rows:
        if row.day not in index:
            continue
        values = series.setdefault(name(row), [None] * len(days))
        v = value(row)
        if v is not None:
            values[index[row.day]] = (values[index[row.day]] or 0) + v
    return sorted(series.items())


def _zero_filled(series: list[tuple[str, list[float | None]]]) -> list[tuple[str, list[float | None]]]:
    return [(label, [v or 0 for v in values]) for label, values in series]


def cost_charts(rows: Sequence[UsageRow], days: Sequence[str], *, with_tenant: bool) -> tuple[Chart, Chart]:
    """(cost per day stacked by tenant/adapter, tokens per day) from usage grouped by day and model."""

    def name(r: UsageRow) -> str:
        return series_name(r, with_tenant=with_tenant)

    cost = _zero_filled(per_day(rows, days, lambda r: r.cost, name))
    tokens = _zero_filled(per_day(rows, days, lambda r: r.prompt_tokens + r.completion_tokens, name))
    return (
        chart("bar", days, cost, y_label="cost", stacked=True, y_min=0),
        chart("line", days, tokens, y_label="tokens (prompt + completion)", y_min=0),
    )


def latency_chart(rows: Sequence[UsageRow], days: Sequence[str], *, with_tenant: bool) -> Chart:
    """p50 and p95 latency per day, from usage grouped by day (one row per tenant and day)."""
    index = {d: i for i, d in enumerate(days)}
    series: dict[str, list[float | None]] = {}
    for row in rows:
        if row.day not in index:
            continue
        prefix = f"{row.tenant} " if with_tenant else ""
        for q, value in (("p50", row.p50_latency_ms), ("p95", row.p95_latency_ms)):
            series.setdefault(f"{prefix}{q}", [None] * len(days))[index[row.day]] = value
    return chart("line", days, sorted(series.items()), y_label="latency (ms)", y_min=0)


@dataclass(frozen=True)
class Savings:
    tenant: str
    adapter: str
    version: int | None
    job_id: str
    saved_per_request: float
    requests: int
    prompt_price_per_1k: float

    @property
    def tokens_saved(self) -> float:
        return self.saved_per_request * self.requests

    @property
    def cost_saved(self) -> float:
        return self.tokens_saved * self.prompt_price_per_1k / 1000


# --- feedback -------------------------------------------------------------------------


def signal_chart(series: Mapping[str, Sequence[FeedbackSignal]], days: Sequence[str]) -> Chart:
    """Share of good answers per day and version: the feedback signal drift is judged on."""
    return chart(
        "line",
        days,
        [(name, [s.share_good for s in signals]) for name, signals in sorted(series.items())],
        y_label="share of good answers",
        y_min=0,
        y_max=1,
    )


# --- overview -------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageSummary:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, totals: UsageTotals) -> UsageSummary:
        return cls(**{f.name: getattr(totals, f.name) for f in fields(cls)})


def summaries_by_tenant(rows: Iterable[UsageRow]) -> dict[str, UsageSummary]:
    """Usage rows (any grouping) summed per tenant name, as the usage API sums them."""
    by_tenant: dict[str, list[UsageRow]] = defaultdict(list)
    for r in rows:
        by_tenant[r.tenant].append(r)
    return {tenant: UsageSummary.of(usage.totals(group)) for tenant, group in by_tenant.items()}


# --- formatting (Jinja filters) ---------------------------------------------------------


def fmt_int(value: float | None) -> str:
    return "–" if value is None else f"{round(value):,}"


def fmt_num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def fmt_cost(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.2f}" if value >= 1 or value == 0 else f"{value:.4f}"


def fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


def fmt_dt(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


FILTERS: dict[str, Callable[..., str]] = {
    "int": fmt_int,
    "num": fmt_num,
    "pct": fmt_pct,
    "cost": fmt_cost,
    "ms": fmt_ms,
    "dt": fmt_dt,
}
