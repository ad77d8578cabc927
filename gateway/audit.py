"""The audit log: who did what to which tenant's setup, when, with the state before and after.

(Appending is core.audit.record, re-exported here; this module describes and reads.)

Every administrative and tenant-management action (tenants, keys, adapters and their
versions, policies, limits, privacy settings, exports and deletions) appends one
`core.models.AuditEvent`. The table is append-only: nothing here updates or deletes, and
database triggers (migration 0004) refuse UPDATE and DELETE from anyone else.

Secrets never enter it: callers pass descriptions (a key's id and hint, never the key).

Actors: "admin" (the admin key), "key:<key id>" (a tenant's own key), "cli:<OS user>",
"console:..." (gateway.console.auth), "job:<job id>" and "policy" (the trainer).

Tenant, key, limits, adapter and fine-tuning job actions record their own events in the
transaction of the change (gateway.tenants, adapters.audit_log, trainer.jobs): their
callers only say who acts. The `*_created`/`*_changed` helpers below give each of the
gateway's own actions (tenants, keys, limits, policies) one name and one shape of
before/after; they take the action's session, or the database for a change already made.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

# Writing lives in core.audit (the trainer writes events too); re-exported for the routes.
from core.audit import ADMIN, actor_for_job, actor_for_key, record  # noqa: F401
from core.db import Database
from core.errors import bad_request
from core.ids import as_utc
from core.models import ApiKey, AuditEvent
from core.pages import first_rows
from core.rows import from_row

if TYPE_CHECKING:
    # Types only: the modules that record events may themselves be imported by these.
    from gateway.limits import TenantLimits
    from gateway.tenants import KeyInfo, TenantInfo

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def actor_for_cli() -> str:
    """`cli:<OS user>`: whoever runs `tailor` on a host holds the database credentials."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    return f"cli:{user}"


# --- describing state (small JSON-ready dicts, never secrets) ----------------------


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def describe_tenant(tenant: TenantInfo) -> dict[str, Any]:
    return {"id": tenant.id, "name": tenant.name}


def describe_key(key: KeyInfo | ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "hint": key.hint,
        "name": key.name,
        "expires_at": _iso(key.expires_at),
        "revoked_at": _iso(key.revoked_at),
    }


def key_state(db: Database | Session, key_id: str) -> dict[str, Any] | None:
    """A key's description as `db` sees it now (None if unknown): the `before` of revoke and rotate."""
    if isinstance(db, Database):
        with db.session() as s:
            return key_state(s, key_id)
    key = db.get(ApiKey, key_id)
    return describe_key(key) if key is not None else None


def describe_limits(limits: TenantLimits | None) -> dict[str, Any] | None:
    return limits.to_json() if limits is not None else None


# --- recording one action (one name and shape per action, for routes and CLI) ------


def tenant_created(db: Database | Session, actor: str, tenant: TenantInfo) -> None:
    record(
        db, actor=actor, action="tenant.create", tenant_id=tenant.id, target=tenant.name, after=describe_tenant(tenant)
    )


def tenant_deleted(db: Database | Session, actor: str, tenant: TenantInfo) -> None:
    record(
        db, actor=actor, action="tenant.delete", tenant_id=tenant.id, target=tenant.name, before=describe_tenant(tenant)
    )


def key_created(db: Database | Session, actor: str, key: KeyInfo) -> None:
    record(db, actor=actor, action="key.create", tenant_id=key.tenant_id, target=key.id, after=describe_key(key))


def key_revoked(db: Database | Session, actor: str, before: dict[str, Any] | None, key: KeyInfo) -> None:
    record(
        db,
        actor=actor,
        action="key.revoke",
        tenant_id=key.tenant_id,
        target=key.id,
        before=before,
        after=describe_key(key),
    )


def key_rotated(
    db: Database | Session,
    actor: str,
    old_id: str,
    old_before: dict[str, Any] | None,
    new: KeyInfo,
    *,
    grace_seconds: int,
) -> None:
    """The old key as it was and as it is now (revoked, or expiring after the grace), and its successor."""
    record(
        db,
        actor=actor,
        action="key.rotate",
        tenant_id=new.tenant_id,
        target=old_id,
        before={"old_key": old_before},
        after={
            "old_key": key_state(db, old_id),
            "new_key": describe_key(new),
            "grace_seconds": grace_seconds,
        },
    )


def limits_changed(
    db: Database | Session, actor: str, tenant: TenantInfo, before: TenantLimits | None, after: TenantLimits | None
) -> None:
    was, now = describe_limits(before), describe_limits(after)
    record(db, actor=actor, action="tenant.limits", tenant_id=tenant.id, target=tenant.name, before=was, after=now)


# --- reading ---------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    actor: str
    tenant_id: str | None
    action: str
    target: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass(frozen=True)
class Filter:
    """Which events to read. Events come newest first; ids grow with time.

    `action` is exact, or a prefix when it ends with "." or ".*" ("adapter." matches
    "adapter.promote" and "adapter.canary.start"). `since` is inclusive, `until` exclusive.
    `older_than`/`newer_than` are event-id cursors: the API's `after`/`before`.
    """

    tenant_id: str | None = None
    action: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    older_than: int | None = None
    newer_than: int | None = None


@dataclass(frozen=True)
class Page:
    events: list[Event]
    has_more: bool  # more events past the last one in the direction of the page


def _filtered(f: Filter) -> Select[tuple[AuditEvent]]:
    stmt = select(AuditEvent)
    if f.tenant_id is not None:
        stmt = stmt.where(AuditEvent.tenant_id == f.tenant_id)
    if f.action:
        prefix = f.action[:-1] if f.action.endswith(".*") else f.action
        if prefix.endswith("."):
            # autoescape: action names hold "_" ("fine_tuning"), a LIKE wildcard.
            stmt = stmt.where(AuditEvent.action.startswith(prefix, autoescape=True))
        else:
            stmt = stmt.where(AuditEvent.action == f.action)
    if f.actor is not None:
        stmt = stmt.where(AuditEvent.actor == f.actor)
    # Naive bounds mean UTC; all are compared in UTC as they are bound (core.models.UTCDateTime).
    if f.since is not None:
        stmt = stmt.where(AuditEvent.at >= f.since)
    if f.until is not None:
        stmt = stmt.where(AuditEvent.at < f.until)
    if f.older_than is not None:
        stmt = stmt.where(AuditEvent.id < f.older_than)
    if f.newer_than is not None:
        stmt = stmt.where(AuditEvent.id > f.newer_than)
    return stmt


def query(db: Database, f: Filter, *, limit: int = DEFAULT_LIMIT) -> Page:
    """One page of events, newest first.

    With `newer_than` the page holds the `limit` events just after that id (the previous
    page, or what happened since a poll), still newest first; `has_more` then says that
    even newer ones exist. Otherwise it holds the newest events (older than `older_than`)
    and `has_more` says that older ones exist.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"limit must be between 1 and {MAX_LIMIT}.", param="limit")
    upward = f.newer_than is not None
    order = AuditEvent.id.asc() if upward else AuditEvent.id.desc()
    with db.session() as s:
        rows = first_rows(s, _filtered(f).order_by(order), limit)
    events = [from_row(Event, r) for r in rows.items]
    if upward:
        events.reverse()
    return Page(events=events, has_more=rows.has_more)


def iter_events(db: Database, f: Filter, *, batch: int = MAX_LIMIT) -> Iterator[Event]:
    """Every matching event, newest first, read `batch` at a time (for exports of any size)."""
    cursor = f
    while True:
        with db.session() as s:
            rows = list(s.scalars(_filtered(cursor).order_by(AuditEvent.id.desc()).limit(batch)))
        yield from (from_row(Event, r) for r in rows)
        if len(rows) < batch:
            return
        cursor = replace(cursor, older_than=rows[-1].id)


def has_events(db: Database, tenant_id: str) -> bool:
    """Whether any event names this tenant id (it may belong to a deleted tenant)."""
    with db.session() as s:
        return s.scalar(select(AuditEvent.id).where(AuditEvent.tenant_id == tenant_id).limit(1)) is not None


CSV_COLUMNS = ("id", "at", "actor", "tenant_id", "action", "target", "before", "after")


def csv_lines(events: Iterable[Event]) -> Iterator[str]:
    """A CSV header and one line per event; before/after as compact JSON."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def line(values: Iterable[object]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(CSV_COLUMNS)
    for e in events:
        yield line(
            (
                e.id,
                e.at.isoformat(),
                e.actor,
                e.tenant_id or "",
                e.action,
                e.target or "",
                _json_or_empty(e.before),
                _json_or_empty(e.after),
            )
        )


def _json_or_empty(value: dict[str, Any] | None) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))
