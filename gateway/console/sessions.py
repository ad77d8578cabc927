"""Console sessions kept in the database, so that signing out ends a session everywhere.

The cookie carries a random token; the table keeps only its SHA-256 (`console_sessions.id`),
so reading the table opens no session. A session is live until it expires, is signed out,
or (for a tenant) its key is revoked or expires or its tenant is deleted.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from core.db import Database
from core.ids import hash_key, utcnow
from core.models import ApiKey, ConsoleSession, Tenant


@dataclass(frozen=True)
class LiveSession:
    role: str
    tenant_id: str | None
    tenant_name: str | None  # None: a tenant session whose tenant is gone
    key_id: str | None
    key_live: bool  # a tenant session's key is neither revoked nor expired


def open_session(db: Database, role: str, *, tenant_id: str | None, key_id: str | None, max_age_s: int) -> str:
    """A new session; returns the token for the cookie (its only copy)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with db.session() as s:
        # Sessions past their end are useless: the sign-in that adds one clears them.
        s.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))
        s.add(
            ConsoleSession(
                id=hash_key(token),
                role=role,
                tenant_id=tenant_id,
                key_id=key_id,
                created_at=now,
                expires_at=now + timedelta(seconds=max_age_s),
            )
        )
    return token


def find_live(db: Database, token: str, now: datetime | None = None) -> LiveSession | None:
    """The session of `token` if it is neither signed out nor expired (one query)."""
    now = now or utcnow()
    with db.session() as s:
        row = s.execute(
            select(ConsoleSession, Tenant.name, ApiKey.revoked_at, ApiKey.expires_at)
            .outerjoin(Tenant, Tenant.id == ConsoleSession.tenant_id)
            .outerjoin(ApiKey, ApiKey.id == ConsoleSession.key_id)
            .where(
                ConsoleSession.id == hash_key(token),
                ConsoleSession.revoked_at.is_(None),
                ConsoleSession.expires_at > now,
            )
        ).first()
    if row is None:
        return None
    session, tenant_name, key_revoked_at, key_expires_at = row
    key_live = (
        session.key_id is not None and key_revoked_at is None and (key_expires_at is None or key_expires_at > now)
    )
    return LiveSession(
        role=session.role,
        tenant_id=session.tenant_id,
        tenant_name=tenant_name,
        key_id=session.key_id,
        key_live=key_live,
    )


def revoke(db: Database, token: str) -> None:
    """Sign out: the session's cookie is refused from now on, by every gateway."""
    with db.session() as s:
        s.execute(
            update(ConsoleSession)
            .where(ConsoleSession.id == hash_key(token), ConsoleSession.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
