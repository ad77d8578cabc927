"""Metering: requests, tokens, latency, errors and cost per tenant, day, model and version.

Counts and token sums are aggregated in SQL; latency percentiles are computed here from
the latencies of each group, since SQLite has no percentile function. Ranges are bounded
(`MAX_RANGE_DAYS`) so that the latencies fetched stay bounded too.

Days are UTC calendar days; `since` and `until` are both inclusive.

Latency percentiles cover answered requests only (status < 400): refusals return in a
millisecond and timeouts at the limit, and either would blur how fast answers are served.
Errors and client-closed requests are counted instead.

Requests that were lines of a batch are the `batch` tier, all others `interactive`: rows are
split by tier (group `tier`), batch requests cost `TAILOR_BATCH_PRICE_FACTOR` times the price,
and their latency (they yield to interactive requests) is never mixed into the interactive
tier's percentiles. Both tiers count towards the tenant's token quotas alike (gateway.limits).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import Date, and_, case, cast, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from adapters import registry
from core.db import Database
from core.errors import bad_request
from core.models import AdapterVersion, Interaction, Tenant
from gateway.prices import BATCH, INTERACTIVE, PriceBook
from gateway.proxy import CLIENT_CLOSED
from trainer.feedback import feedback_signal

GROUPS = ("day", "model", "version", "tier")
DEFAULT_GROUP_BY = ("day", "model", "version", "tier")
MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 30
# --------------------------------------------------------------------------- usage


@dataclass(frozen=True)
class UsageRow:
    tenant: str
    day: str | None  # ISO date; None when not grouped by day
    model: str | None  # public name as requested; None when not grouped by model
    adapter_version: int | None  # None: base model, or not grouped by version
    tier: str | None  # "interactive" or "batch"; None when not grouped by tier
    requests: int
    errors: int  # status >= 400, except client-closed
    client_closed: int  # status 499: the client went away
    prompt_tokens: int
    completion_tokens: int
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p50_ttft_ms: float | None  # streams only
    cost: float


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    errors: int
    client_closed: int
    prompt_tokens: int
    completion_tokens: int
    cost: float


def parse_group_by(value: str | Sequence[str]) -> tuple[str, ...]:
    """Validate and order the grouping; "version" implies "model" (version numbers are per adapter)."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    parts = [p for p in parts if p]
    unknown = [p for p in parts if p not in GROUPS]
    if unknown:
        raise bad_request(
            f"Unknown group_by value(s) {unknown}; use a comma-separated subset of {list(GROUPS)}.",
            param="group_by",
        )
    wanted = set(parts)
    if "version" in wanted:
        wanted.add("model")
    return tuple(g for g in GROUPS if g in wanted)


def default_range(today: date | None = None) -> tuple[date, date]:
    """The last DEFAULT_RANGE_DAYS days, today (UTC) included."""
    today = today or datetime.now(timezone.utc).date()
    return today - timedelta(days=DEFAULT_RANGE_DAYS - 1), today


def _bounds(since: date, until: date) -> tuple[datetime, datetime]:
    if until < since:
        raise bad_request("'until' is before 'since'.", param="until")
    days = (until - since).days + 1
    if days > MAX_RANGE_DAYS:
        raise bad_request(
            f"The range spans {days} days; ask for at most {MAX_RANGE_DAYS} at a time.",
            code="range_too_large",
            param="since",
        )
    start = datetime.combine(since, time.min, tzinfo=timezone.utc)
    return start, start + timedelta(days=days)


def _day_expr(db: Database) -> ColumnElement[Any]:
    """The UTC calendar day of `created_at`, portable across SQLite and PostgreSQL."""
    if db.engine.dialect.name == "postgresql":
        # A literal, not a bound parameter: psycopg binds server-side, and the same
        # expression with $1 in SELECT and $2 in GROUP BY is "not in GROUP BY" to PG.
        return cast(func.timezone(literal_column("'UTC'"), Interaction.created_at), Date)
    # SQLite stores UTC text "YYYY-MM-DD HH:MM:SS..."; date() keeps the day.
    return func.date(Interaction.created_at)


def _iso_day(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)[:10]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _adapter_name(model: str, version_id: str | None) -> str | None:
    # Same parsing as registry.route: "name" or "name@vN"; rows without a version are base.
    return model.partition("@v")[0] if version_id is not None else None


_Key = tuple[str, str | None, str | None, int | None, str | None]  # tenant, day, model, version, tier


def _tier_expr() -> ColumnElement[Any]:
    # Literals, not bound parameters: the same expression is selected and grouped by (see _day_expr).
    return case(
        (Interaction.batch_id.is_(None), literal_column(f"'{INTERACTIVE}'")), else_=literal_column(f"'{BATCH}'")
    )


@dataclass
class _Sums:
    requests: int = 0
    errors: int = 0
    client_closed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


def usage(
    db: Database,
    *,
    tenant_id: str | None,
    since: date,
    until: date,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    prices: PriceBook | None = None,
) -> list[UsageRow]:
    """Usage per tenant (all tenants when `tenant_id` is None) and the `group_by` dimensions."""
    groups = parse_group_by(group_by)
    start, end = _bounds(since, until)
    prices = prices or PriceBook()
    day = _day_expr(db).label("day")
    tier = _tier_expr().label("tier")
    status = Interaction.status_code
    # Always grouped by model, version and tier in SQL, whatever the caller's grouping: the
    # price depends on all three, so cost is computed per fine row and then summed.
    keys: list[Any] = [
        Tenant.name,
        Interaction.model,
        Interaction.adapter_version_id,
        AdapterVersion.version,
        AdapterVersion.base_model,
        tier,
    ]
    if "day" in groups:
        keys.append(day)
    where = [Interaction.created_at >= start, Interaction.created_at < end]
    if tenant_id is not None:
        where.append(Interaction.tenant_id == tenant_id)

    def scoped(*columns: Any) -> Any:
        return (
            select(*columns)
            .select_from(Interaction)
            .join(Tenant, Tenant.id == Interaction.tenant_id)
            .outerjoin(AdapterVersion, AdapterVersion.id == Interaction.adapter_version_id)
            .where(*where)
        )

    counts = scoped(
        *keys,
        func.count(),
        func.sum(case((and_(status >= 400, status != CLIENT_CLOSED), 1), else_=0)),
        func.sum(case((status == CLIENT_CLOSED, 1), else_=0)),
        func.coalesce(func.sum(Interaction.prompt_tokens), 0),
        func.coalesce(func.sum(Interaction.completion_tokens), 0),
    ).group_by(*keys)
    # Only the columns the percentiles need, one row per answered request.
    timing_keys = [Tenant.name, Interaction.model, AdapterVersion.version, tier] + ([day] if "day" in groups else [])
    timings = scoped(*timing_keys, Interaction.stream, Interaction.latency_ms, Interaction.ttft_ms).where(
        status < 400, Interaction.latency_ms.is_not(None)
    )

    def key(tenant: str, model: str, version: int | None, tier_value: str, day_value: object | None) -> _Key:
        return (
            tenant,
            _iso_day(day_value) if "day" in groups else None,
            model if "model" in groups else None,
            version if "version" in groups else None,
            tier_value if "tier" in groups else None,
        )

    sums: dict[_Key, _Sums] = defaultdict(_Sums)
    latencies: dict[_Key, list[float]] = defaultdict(list)
    ttfts: dict[_Key, list[float]] = defaultdict(list)
    with db.session() as s:
        for tenant, model, version_id, version, version_base, tier_value, *rest in s.execute(counts):
            day_value = rest[0] if "day" in groups else None
            requests, errors, closed, prompt, completion = (int(v or 0) for v in rest[-5:])
            acc = sums[key(tenant, model, version, tier_value, day_value)]
            acc.requests += requests
            acc.errors += errors
            acc.client_closed += closed
            acc.prompt_tokens += prompt
            acc.completion_tokens += completion
            adapter = _adapter_name(model, version_id)
            acc.cost += prices.cost(tenant, model, adapter, tier_value, prompt, completion, version_base)
        for tenant, model, version, tier_value, *rest in s.execute(timings.execution_options(yield_per=10_000)):
            stream, latency, ttft = rest[-3:]
            k = key(tenant, model, version, tier_value, rest[0] if "day" in groups else None)
            latencies[k].append(float(latency))
            if stream and ttft is not None:
                ttfts[k].append(float(ttft))

    rows = [
        UsageRow(
            tenant=k[0],
            day=k[1],
            model=k[2],
            adapter_version=k[3],
            tier=k[4],
            requests=acc.requests,
            errors=acc.errors,
            client_closed=acc.client_closed,
            prompt_tokens=acc.prompt_tokens,
            completion_tokens=acc.completion_tokens,
            p50_latency_ms=percentile(latencies.get(k, []), 0.5),
            p95_latency_ms=percentile(latencies.get(k, []), 0.95),
            p50_ttft_ms=percentile(ttfts.get(k, []), 0.5),
            cost=round(acc.cost, 9),  # float sums of tiny per-token prices leave noise
        )
        for k, acc in sums.items()
    ]
    rows.sort(key=lambda r: (r.tenant, r.day or "", r.model or "", r.adapter_version or 0, r.tier or ""))
    return rows


def totals(rows: Iterable[UsageRow]) -> UsageTotals:
    """Sums over rows (percentiles do not add up, so there are none)."""
    rows = list(rows)
    return UsageTotals(
        requests=sum(r.requests for r in rows),
        errors=sum(r.errors for r in rows),
        client_closed=sum(r.client_closed for r in rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        cost=round(sum(r.cost for r in rows), 9),
    )


CSV_FIELDS = tuple(f.name for f in fields(UsageRow))


def to_csv(rows: Iterable[UsageRow]) -> str:
    """RFC 4180 CSV with a header row; None is an empty cell."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for row in rows:
        data = asdict(row)
        writer.writerow(["" if data[f] is None else data[f] for f in CSV_FIELDS])
    return out.getvalue()


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class VersionStats:
    """How one version of an adapter serves and is judged (canary and active side by side)."""

    version: int
    state: str
    active: bool
    canary: bool
    requests: int
    errors: int
    client_closed: int
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    judged: int
    share_good: float | None
    correction_rate: float | None


def version_stats(
    db: Database, tenant_id: str, adapter_name: str, *, since: date | None = None, until: date | None = None
) -> list[VersionStats]:
    """Per version of the tenant's adapter `adapter_name`, over all time or [since, until].

    Unknown or foreign names raise registry.model_not_found (404).
    """
    info = registry.get_adapter(db, tenant_id, adapter_name)
    if since is not None and until is not None and until < since:
        raise bad_request("'until' is before 'since'.", param="until")
    # No range limit here: a few versions, and the question is usually "since it started".
    start = datetime.combine(since, time.min, tzinfo=timezone.utc) if since else None
    end = datetime.combine(until + timedelta(days=1), time.min, tzinfo=timezone.utc) if until else None
    status = Interaction.status_code
    where = [Interaction.tenant_id == tenant_id, Interaction.adapter_version_id.in_([v.id for v in info.versions])]
    if start is not None:
        where.append(Interaction.created_at >= start)
    if end is not None:
        where.append(Interaction.created_at < end)
    counts_q = (
        select(
            Interaction.adapter_version_id,
            func.count(),
            func.sum(case((and_(status >= 400, status != CLIENT_CLOSED), 1), else_=0)),
            func.sum(case((status == CLIENT_CLOSED, 1), else_=0)),
        )
        .where(*where)
        .group_by(Interaction.adapter_version_id)
    )
    latency_q = select(Interaction.adapter_version_id, Interaction.latency_ms).where(
        *where, status < 400, Interaction.latency_ms.is_not(None)
    )
    counts: dict[str, tuple[int, int, int]] = {}
    latencies: dict[str, list[float]] = defaultdict(list)
    with db.session() as s:
        for vid, requests, errors, closed in s.execute(counts_q):
            counts[vid] = (int(requests), int(errors or 0), int(closed or 0))
        for vid, latency in s.execute(latency_q.execution_options(yield_per=10_000)):
            latencies[vid].append(float(latency))
    out = []
    for v in info.versions:
        requests, errors, closed = counts.get(v.id, (0, 0, 0))
        signal = feedback_signal(db, tenant_id, v.id, since=start, until=end)
        out.append(
            VersionStats(
                version=v.version,
                state=v.state,
                active=v.version == info.active_version,
                canary=v.version == info.canary_version,
                requests=requests,
                errors=errors,
                client_closed=closed,
                p50_latency_ms=percentile(latencies[v.id], 0.5),
                p95_latency_ms=percentile(latencies[v.id], 0.95),
                judged=signal.judged,
                share_good=signal.share_good,
                correction_rate=signal.correction_rate,
            )
        )
    return out
