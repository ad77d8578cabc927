"""What each console page shows, gathered with the functions the JSON API uses.

Tenants, keys, adapters, promotion, jobs, usage, drift: all read through gateway.tenants,
adapters.registry/promotion, trainer.jobs, gateway.usage and trainer.policy, so the
console and the API cannot disagree. The only queries of its own are the two the API
has no call for: feedback next to the answers it judged, and which versions were judged
in a window.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import and_, or_, select

from adapters import promotion, registry
from adapters.registry import AdapterInfo, VersionInfo
from core.errors import TailorError
from core.models import Feedback, Interaction
from core.states import JobStatus, VersionState
from gateway import limits, tenants, usage
from gateway.limits import TenantLimits
from gateway.prices import PriceBook, prices_from_settings
from gateway.routes.fine_tuning import report_bytes
from gateway.services import Services
from gateway.tenants import KeyInfo, TenantInfo
from gateway.usage import UsageRow, VersionStats
from trainer import job_records, jobs, policy
from trainer.datasets import GOOD_SCORE
from trainer.feedback import FeedbackSignal, feedback_signal
from trainer.job_records import EvaluationInfo, EventInfo
from trainer.jobs import JobInfo
from trainer.policy import DriftStatus

from . import views
from .views import Savings, UsageSummary

MAX_EVENTS = 2000  # a job page reads at most this many events (20 pages of the API's 100)
MAX_JOBS_SCANNED = 500  # jobs looked at for distillation savings, per tenant
FEEDBACK_PAGE = 50


def today() -> date:
    return datetime.now(timezone.utc).date()


def _prices(services: Services) -> PriceBook:
    return prices_from_settings(services.settings)


# --- overview and tenants ----------------------------------------------------------------


@dataclass(frozen=True)
class TenantRow:
    tenant: TenantInfo
    today: UsageSummary
    week: UsageSummary
    limits: TenantLimits | None
    used: dict[str, int]
    adapters: int


def overview(services: Services, tenant_id: str | None) -> list[TenantRow]:
    """Every tenant (operators) or one (`tenant_id`): usage today and over 7 days, limits."""
    db, end = services.db, today()
    found = [tenants.find_tenant(db, tenant_id)] if tenant_id else tenants.list_tenants(db)
    day = views.summaries_by_tenant(
        usage.usage(db, tenant_id=tenant_id, since=end, until=end, group_by=(), prices=_prices(services))
    )
    week = views.summaries_by_tenant(
        usage.usage(
            db, tenant_id=tenant_id, since=end - timedelta(days=6), until=end, group_by=(), prices=_prices(services)
        )
    )
    return [
        TenantRow(
            tenant=t,
            today=day.get(t.name, UsageSummary()),
            week=week.get(t.name, UsageSummary()),
            limits=tenants.get_limits(db, t.id),
            used=limits.usage_now(db, t.id),
            adapters=len(registry.list_adapters(db, t.id)),
        )
        for t in found
    ]


@dataclass(frozen=True)
class TenantDetail:
    row: TenantRow
    keys: list[KeyInfo]
    adapters: list[AdapterInfo]


def tenant_detail(services: Services, tenant: TenantInfo) -> TenantDetail:
    return TenantDetail(
        row=overview(services, tenant.id)[0],
        keys=tenants.list_keys(services.db, tenant.id),
        adapters=registry.list_adapters(services.db, tenant.id),
    )


# --- adapters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRow:
    lineage: promotion.VersionLineage
    info: VersionInfo | None
    stats: VersionStats | None
    parent: int | None  # the version number it was trained from (or meant to replace)


@dataclass(frozen=True)
class AdapterDetail:
    adapter: AdapterInfo
    versions: list[VersionRow]
    drift: DriftStatus
    can_rollback: bool


def adapter_detail(services: Services, tenant_id: str, name: str) -> AdapterDetail:
    db = services.db
    info = registry.get_adapter(db, tenant_id, name)  # 404 for unknown and foreign names
    lineage = promotion.lineage(db, tenant_id, name)
    stats = {s.version: s for s in usage.version_stats(db, tenant_id, name)}
    by_id = {v.id: v.version for v in lineage}
    infos = {v.version: v for v in info.versions}
    rows = [
        VersionRow(v, infos.get(v.version), stats.get(v.version), by_id.get(v.parent_version_id or ""))
        for v in sorted(lineage, key=lambda v: v.version, reverse=True)
    ]
    # Mirrors promotion.rollback's choice of target, only to decide whether to offer the button.
    can_rollback = any(v.promoted_at is not None and v.state == VersionState.RETIRED for v in lineage)
    return AdapterDetail(info, rows, policy.drift(db, tenant_id, name), can_rollback)


# --- jobs ----------------------------------------------------------------------------------


def all_events(services: Services, tenant_id: str, job_id: str) -> list[EventInfo]:
    """A job's events, oldest first (the API pages them newest first, 100 at a time)."""
    out: list[EventInfo] = []
    after: int | None = None
    while len(out) < MAX_EVENTS:
        page, more = job_records.list_events(services.db, tenant_id, job_id, after=after, limit=100)
        out.extend(page)
        if not more or not page:
            break
        after = page[-1].id
    return sorted(out, key=lambda e: e.id)


@dataclass(frozen=True)
class JobDetail:
    job: JobInfo
    events: list[EventInfo]
    evaluation: EvaluationInfo | None
    report: dict[str, Any] | None


def _report(services: Services, tenant_id: str, job_id: str) -> dict[str, Any] | None:
    try:
        data = json.loads(report_bytes(services, tenant_id, job_id, "report.json"))
    except (TailorError, ValueError):  # no report (yet), or one that cannot be read
        return None
    return data if isinstance(data, dict) else None


def job_detail(services: Services, tenant_id: str, job_id: str) -> JobDetail:
    job = jobs.get_job(services.db, tenant_id, job_id)
    try:
        evaluation: EvaluationInfo | None = job_records.get_evaluation(services.db, tenant_id, job_id)
    except TailorError as exc:
        if exc.status != 404:
            raise
        evaluation = None
    report = _report(services, tenant_id, job_id) if evaluation and evaluation.report_key else None
    return JobDetail(job, all_events(services, tenant_id, job_id), evaluation, report)


def job_live(services: Services, tenant_id: str, job_id: str) -> tuple[JobInfo, list[EventInfo]]:
    """What the polled part of a job page needs: no evaluation, no report."""
    return jobs.get_job(services.db, tenant_id, job_id), all_events(services, tenant_id, job_id)


# --- feedback ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackFilter:
    adapter: str | None = None
    rating: str | None = None  # good | bad
    correction: str | None = None  # yes | no

    @property
    def active(self) -> bool:
        return any((self.adapter, self.rating, self.correction))


@dataclass(frozen=True)
class FeedbackRow:
    id: str
    created_at: datetime
    model: str | None
    version: int | None
    rating: str | None
    score: float | None
    correction: str | None
    preferred: str | None
    source: str
    prompt: str
    answer: str | None


def _verdict_is(rating: str) -> Any:
    # trainer.datasets.verdict in SQL: the rating wins, else the score decides.
    by_score = Feedback.score >= GOOD_SCORE if rating == "good" else Feedback.score < GOOD_SCORE
    return or_(Feedback.rating == rating, and_(Feedback.rating.is_(None), by_score))


def recent_feedback(
    services: Services, tenant_id: str, f: FeedbackFilter, *, limit: int = FEEDBACK_PAGE
) -> list[FeedbackRow]:
    """The tenant's newest feedback with the answer it judged, filtered."""
    versions = {v.id: v.version for a in registry.list_adapters(services.db, tenant_id) for v in a.versions}
    where: list[Any] = [Feedback.tenant_id == tenant_id]
    if f.adapter:
        ids = [v.id for a in registry.list_adapters(services.db, tenant_id) if a.name == f.adapter for v in a.versions]
        where.append(Feedback.adapter_version_id.in_(ids))
    if f.rating in ("good", "bad"):
        where.append(_verdict_is(f.rating))
    if f.correction == "yes":
        where.append(Feedback.correction.is_not(None))
    elif f.correction == "no":
        where.append(Feedback.correction.is_(None))
    query = (
        select(Feedback, Interaction.request, Interaction.response_text)
        .outerjoin(
            Interaction, and_(Interaction.id == Feedback.interaction_id, Interaction.tenant_id == Feedback.tenant_id)
        )
        .where(*where)
        .order_by(Feedback.created_at.desc(), Feedback.id.desc())
        .limit(limit)
    )
    with services.db.session() as s:
        rows = s.execute(query).all()
    return [
        FeedbackRow(
            id=fb.id,
            created_at=fb.created_at,
            model=fb.model,
            version=versions.get(fb.adapter_version_id or ""),
            rating=fb.rating,
            score=fb.score,
            correction=fb.correction,
            preferred=fb.preferred,
            source=fb.source,
            prompt=prompt_excerpt(request, fb.messages),
            answer=answer,
        )
        for fb, request, answer in rows
    ]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_excerpt(request: dict[str, Any] | None, messages: list[dict[str, Any]] | None, limit: int = 300) -> str:
    """The last user turn of a logged request (or of an imported example), shortened."""
    turns = (request or {}).get("messages") or messages or []
    text = ""
    if isinstance(turns, list):
        users = [m for m in turns if isinstance(m, dict) and m.get("role") == "user"]
        text = _text(users[-1].get("content")) if users else ""
    if not text and isinstance((request or {}).get("prompt"), str):
        text = request["prompt"]  # type: ignore[index]
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class SignalSeries:
    days: list[str]
    series: dict[str, list[FeedbackSignal]] = field(default_factory=dict)


def _judged_versions(services: Services, tenant_id: str, since: datetime) -> list[str]:
    query = (
        select(Feedback.adapter_version_id)
        .where(
            Feedback.tenant_id == tenant_id,
            Feedback.created_at >= since,
            Feedback.adapter_version_id.is_not(None),
            Feedback.interaction_id.is_not(None),
        )
        .distinct()
    )
    with services.db.session() as s:
        return [v for v in s.scalars(query) if v]


def signal_by_day(services: Services, tenant_id: str, days: int = 14) -> SignalSeries:
    """Per adapter version judged in the last `days` days: its feedback signal on each day."""
    end = today()
    start = end - timedelta(days=days - 1)
    labels = views.day_labels(start, end)
    names = {v.id: f"{a.name} v{v.version}" for a in registry.list_adapters(services.db, tenant_id) for v in a.versions}
    series: dict[str, list[FeedbackSignal]] = {}
    first = datetime.combine(start, time.min, tzinfo=timezone.utc)
    for version_id in _judged_versions(services, tenant_id, first):
        if version_id not in names:
            continue
        series[names[version_id]] = [
            feedback_signal(
                services.db,
                tenant_id,
                version_id,
                since=first + timedelta(days=i),
                until=first + timedelta(days=i + 1),
            )
            for i in range(days)
        ]
    return SignalSeries(labels, series)


def drift_all(services: Services, tenant_id: str) -> list[DriftStatus]:
    return [policy.drift(services.db, tenant_id, a.name) for a in registry.list_adapters(services.db, tenant_id)]


# --- cost --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostData:
    since: date
    until: date
    by_day_model: list[UsageRow]
    by_day: list[UsageRow]
    by_model: list[UsageRow]
    savings: list[Savings]


def cost(services: Services, scope: Sequence[TenantInfo] | None, since: date, until: date) -> CostData:
    """Usage of one tenant (`scope` of one), or of all (`scope` None), over [since, until]."""
    tenant_id = scope[0].id if scope and len(scope) == 1 else None
    prices = _prices(services)

    def rows(*group_by: str) -> list[UsageRow]:
        return usage.usage(services.db, tenant_id=tenant_id, since=since, until=until, group_by=group_by, prices=prices)

    everyone = scope if scope is not None else tenants.list_tenants(services.db)
    savings = [s for t in everyone for s in distillation_savings(services, t, since, until)]
    return CostData(since, until, rows("day", "model"), rows("day"), rows("model"), savings)


def _distillation_jobs(services: Services, tenant_id: str) -> list[JobInfo]:
    found: list[JobInfo] = []
    after: str | None = None
    while len(found) < MAX_JOBS_SCANNED:
        page, more = jobs.list_jobs(services.db, tenant_id, after=after, limit=100)
        found.extend(j for j in page if j.method == "distillation" and j.status == JobStatus.SUCCEEDED)
        if not more or not page:
            break
        after = page[-1].id
    return found


def distillation_savings(services: Services, tenant: TenantInfo, since: date, until: date) -> list[Savings]:
    """Per distilled version: prompt tokens it saves per request x requests it served in range."""
    prices = _prices(services)
    out = []
    for job in _distillation_jobs(services, tenant.id):
        results = (job.metrics or {}).get("distillation") or {}
        saved = results.get("prompt_tokens_saved_per_request")
        if not isinstance(saved, (int, float)) or job.result_version_id is None:
            continue
        try:
            stats = usage.version_stats(services.db, tenant.id, job.adapter_name, since=since, until=until)
            info = registry.get_adapter(services.db, tenant.id, job.adapter_name)
        except TailorError:  # the adapter was deleted since
            continue
        number = next((v.version for v in info.versions if v.id == job.result_version_id), None)
        requests = next((s.requests for s in stats if s.version == number), 0)
        price = prices.price(tenant.name, job.adapter_name, job.adapter_name)
        out.append(Savings(tenant.name, job.adapter_name, number, job.id, float(saved), requests, price.prompt_per_1k))
    return out
