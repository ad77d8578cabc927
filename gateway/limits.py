"""Per-tenant rate limits and token quotas, shared by every gateway replica.

A tenant may have any of: requests per minute, tokens per minute (rate limits), tokens per
day and tokens per month (quotas). Counters live in the database (`rate_counters`, one row
per tenant, kind and window), so every replica counts against the same numbers:

- admission: a request of a limited tenant bumps its requests-per-minute counter with one
  atomic upsert (INSERT ... ON CONFLICT DO UPDATE ... RETURNING) and reads the token
  counters of the current windows, in one transaction; a refused request rolls its bump
  back, so it consumes nothing. Over a limit it gets 429 with `Retry-After` (seconds to
  the window's end) in OpenAI's error shape: `rate_limit_exceeded` for the per-minute
  limits, `insufficient_quota` for the daily and monthly quotas;
- charging: tokens are known when a request ends; they are summed in memory and flushed
  to the counters in one transaction every `flush_interval_s`. A burst can therefore run
  past a token limit by what is in flight and one flush interval; requests are exact.

Windows are fixed (calendar minute, UTC day, UTC month). Tenants without rate limits or
token quotas cost nothing: no counter is read or written for them.

The same `tenants.limits` object holds the tenant's storage and queue quotas
(`max_stored_bytes`, `max_adapter_versions`, `max_files`, `max_queued_jobs`); they are
enforced where the bytes and jobs are created (core.quotas), never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.db import Database
from core.errors import TailorError
from core.ids import utcnow
from core.models import RateCounter

log = logging.getLogger("tailor.limits")

# kind -> (window, the limit field that reads it)
REQUESTS_MINUTE = "requests_minute"
TOKENS_MINUTE = "tokens_minute"
TOKENS_DAY = "tokens_day"
TOKENS_MONTH = "tokens_month"
_TOKEN_KINDS = (TOKENS_MINUTE, TOKENS_DAY, TOKENS_MONTH)
# Old windows are deleted once they can no longer be asked for (months are kept a year,
# for the record of what a tenant used).
_KEEP = {REQUESTS_MINUTE: 10, TOKENS_MINUTE: 10, TOKENS_DAY: 40, TOKENS_MONTH: 13}


@dataclass(frozen=True)
class TenantLimits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    # Storage and queue quotas (core.quotas); None: the operator's default.
    max_stored_bytes: int | None = None
    max_adapter_versions: int | None = None
    max_files: int | None = None
    max_queued_jobs: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TenantLimits | None:
        if not data:
            return None
        limits = cls(**{k: data.get(k) for k in cls.__dataclass_fields__})
        return limits if limits.any else None

    def to_json(self) -> dict[str, int | None]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def any(self) -> bool:
        return any(v is not None for v in self.to_json().values())

    @property
    def rate_limited(self) -> bool:
        """Whether requests are counted at all: any per-minute limit or token quota."""
        return self.requests_per_minute is not None or self.counts_tokens

    @property
    def counts_tokens(self) -> bool:
        return any(v is not None for v in (self.tokens_per_minute, self.tokens_per_day, self.tokens_per_month))


def window(kind: str, now: datetime) -> tuple[int, datetime]:
    """(bucket number, when the window ends) of the window of `kind` that holds `now`."""
    now = now.astimezone(timezone.utc)
    if kind in (REQUESTS_MINUTE, TOKENS_MINUTE):
        bucket = int(now.timestamp() // 60)
        return bucket, datetime.fromtimestamp((bucket + 1) * 60, tz=timezone.utc)
    if kind == TOKENS_DAY:
        day = now.date()
        end = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=1)
        return day.toordinal(), end
    if kind == TOKENS_MONTH:
        first_next = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=timezone.utc)
        return now.year * 12 + now.month - 1, first_next
    raise ValueError(f"unknown counter kind {kind!r}")


def _upsert(s: Session, tenant_id: str, kind: str, bucket: int, amount: int) -> int:
    """Add `amount` to a counter, creating it at 0 first; returns the new count."""
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert(RateCounter)
        .values(tenant_id=tenant_id, kind=kind, bucket=bucket, count=amount)
        .on_conflict_do_update(
            index_elements=["tenant_id", "kind", "bucket"], set_={"count": RateCounter.count + amount}
        )
        .returning(RateCounter.count)
    )
    return int(s.execute(stmt).scalar_one())


def _retry_after(end: datetime, now: datetime) -> int:
    return max(1, math.ceil((end - now).total_seconds()))


def _refuse(kind: str, limit: int, end: datetime, now: datetime) -> TailorError:
    wait = _retry_after(end, now)
    if kind in (TOKENS_DAY, TOKENS_MONTH):
        period = "day" if kind == TOKENS_DAY else "month"
        return TailorError(
            429,
            f"You exceeded your quota of {limit} tokens per {period} (UTC). It resets in {wait} s.",
            code="insufficient_quota",
            type="insufficient_quota",
            headers={"Retry-After": str(wait)},
        )
    what = "requests" if kind == REQUESTS_MINUTE else "tokens"
    return TailorError(
        429,
        f"Rate limit reached: {limit} {what} per minute. Please try again in {wait} s.",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(wait)},
    )


def admit(db: Database, tenant_id: str, limits: TenantLimits, now: datetime | None = None) -> None:
    """Count one request against `limits`; raises a 429 TailorError when over any of them."""
    if not limits.rate_limited:
        return  # storage quotas only: nothing to count on a request
    now = now or utcnow()
    with db.session() as s:
        if limits.requests_per_minute is not None:
            bucket, end = window(REQUESTS_MINUTE, now)
            if _upsert(s, tenant_id, REQUESTS_MINUTE, bucket, 1) > limits.requests_per_minute:
                raise _refuse(REQUESTS_MINUTE, limits.requests_per_minute, end, now)
        checks = [
            (kind, limit)
            for kind, limit in zip(
                _TOKEN_KINDS, (limits.tokens_per_minute, limits.tokens_per_day, limits.tokens_per_month), strict=True
            )
            if limit is not None
        ]
        if not checks:
            return
        windows = {kind: window(kind, now) for kind, _ in checks}
        rows = s.execute(
            select(RateCounter.kind, RateCounter.count).where(
                RateCounter.tenant_id == tenant_id,
                or_(*(and_(RateCounter.kind == k, RateCounter.bucket == b) for k, (b, _) in windows.items())),
            )
        ).all()
        used = {kind: int(count) for kind, count in rows}
        # The longest window first: a spent monthly quota is the answer that matters.
        for kind, limit in reversed(checks):
            if used.get(kind, 0) >= limit:
                raise _refuse(kind, limit, windows[kind][1], now)


def usage_now(db: Database, tenant_id: str, now: datetime | None = None) -> dict[str, int]:
    """What the tenant used in each current window (for the limits API)."""
    now = now or utcnow()
    out = {}
    with db.session() as s:
        for kind in (REQUESTS_MINUTE, *_TOKEN_KINDS):
            bucket, _ = window(kind, now)
            row = s.get(RateCounter, (tenant_id, kind, bucket))
            out[kind] = int(row.count) if row else 0
    return out


def charge(db: Database, tokens: dict[str, int], now: datetime | None = None) -> None:
    """Add each tenant's tokens to its minute, day and month counters in one transaction."""
    now = now or utcnow()
    with db.session() as s:
        for tenant_id, amount in sorted(tokens.items()):  # one lock order for every replica
            if amount > 0:
                for kind in _TOKEN_KINDS:
                    _upsert(s, tenant_id, kind, window(kind, now)[0], amount)


def prune(db: Database, now: datetime | None = None) -> int:
    """Delete counters of windows nobody can ask about any more."""
    now = now or utcnow()
    removed = 0
    with db.session() as s:
        for kind, keep in _KEEP.items():
            removed += s.execute(
                delete(RateCounter).where(RateCounter.kind == kind, RateCounter.bucket < window(kind, now)[0] - keep)
            ).rowcount
    return removed


class TokenMeter:
    """Sums finished requests' tokens per tenant in memory; a background task flushes them.

    `add` is called on the event loop at the end of every request of a tenant with token
    limits and must never block; the database write happens in a thread. If a flush fails
    (database away), the tokens are kept and retried at the next flush, never dropped.
    """

    def __init__(self, db: Database, flush_interval_s: float = 0.5) -> None:
        self.db, self.flush_interval_s = db, flush_interval_s
        self._pending: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._flushes = 0

    def add(self, tenant_id: str, tokens: int) -> None:
        if tokens > 0:
            with self._lock:
                self._pending[tenant_id] += tokens

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = dict(self._pending), defaultdict(int)
        if not batch:
            return
        try:
            charge(self.db, batch)
        except Exception:
            with self._lock:  # back in the queue: counted at the next flush
                for tenant_id, amount in batch.items():
                    self._pending[tenant_id] += amount
            raise
        self._flushes += 1
        if self._flushes % 1000 == 0:
            prune(self.db)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="token-meter")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await asyncio.to_thread(self.flush)
            except Exception:  # noqa: BLE001 - kept for the next flush; the loop must live on
                log.warning("token counters not written; retrying at the next flush", exc_info=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.flush)
