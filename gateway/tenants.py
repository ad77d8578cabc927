"""Tenants and their API keys: plain functions shared by the admin API, the console and the CLI.

Each change takes who acts (`actor`, see gateway.audit) and appends its audit event in the
change's own transaction, so the log never holds a change that did not happen nor misses
one that did. `actor=None` records nothing: for setting up tenants outside any request
(fixtures, tools that audit on their own).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import Database
from core.errors import bad_request, conflict, not_found
from core.ids import as_utc, hash_key, key_hint, new_api_key, new_id, utcnow
from core.models import ApiKey, Tenant
from core.rows import from_row
from gateway import audit
from gateway.limits import TenantLimits

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# A grace period is for clients to switch secrets; longer ones would only keep a replaced key alive.
MAX_GRACE_SECONDS = 30 * 86400


@dataclass(frozen=True)
class TenantInfo:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant_id: str
    hint: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: the only moment its secret exists outside the client."""

    info: KeyInfo
    secret: str


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    tenant_name: str
    key_id: str
    limits: TenantLimits | None = None  # None: unlimited; cached with the key (auth_cache_ttl_s)


def create_tenant(db: Database, name: str, *, actor: str | None = None) -> TenantInfo:
    # fullmatch: with match(), `$` also matches before a trailing newline ("acme\n").
    if not TENANT_NAME.fullmatch(name):
        raise bad_request(
            f"Invalid tenant name {name!r}: use 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit.",
            param="name",
        )
    try:
        with db.session() as s:
            tenant = Tenant(id=new_id("ten"), name=name)
            s.add(tenant)
            s.flush()
            created = from_row(TenantInfo, tenant)
            if actor is not None:
                audit.tenant_created(s, actor, created)
        return created
    except IntegrityError:
        raise conflict(f"Tenant {name!r} already exists.", code="tenant_exists") from None


def list_tenants(db: Database) -> list[TenantInfo]:
    with db.session() as s:
        return [from_row(TenantInfo, t) for t in s.scalars(select(Tenant).order_by(Tenant.name))]


def find_tenant(db: Database, name_or_id: str) -> TenantInfo:
    with db.session() as s:
        tenant = s.scalar(select(Tenant).where((Tenant.name == name_or_id) | (Tenant.id == name_or_id)))
        if tenant is None:
            raise not_found(f"No tenant {name_or_id!r}.", code="tenant_not_found")
        return from_row(TenantInfo, tenant)


def delete_tenant(db: Database, name_or_id: str, *, actor: str | None = None) -> TenantInfo:
    """Delete a tenant and all it owns; returns what it was."""
    tenant = find_tenant(db, name_or_id)
    with db.session() as s:
        s.delete(s.get(Tenant, tenant.id))
        if actor is not None:
            audit.tenant_deleted(s, actor, tenant)
    return tenant


def create_key(
    db: Database,
    tenant: str,
    *,
    name: str | None = None,
    expires_at: datetime | None = None,
    actor: str | None = None,
) -> NewKey:
    owner = find_tenant(db, tenant)
    secret = new_api_key()
    with db.session() as s:
        key = ApiKey(
            id=new_id("key"),
            tenant_id=owner.id,
            key_hash=hash_key(secret),
            hint=key_hint(secret),
            name=name,
            # Made UTC here, so what create returns is what a later read returns.
            expires_at=as_utc(expires_at) if expires_at is not None else None,
        )
        s.add(key)
        s.flush()
        info = from_row(KeyInfo, key)
        if actor is not None:
            audit.key_created(s, actor, info)
    return NewKey(info=info, secret=secret)


def list_keys(db: Database, tenant: str) -> list[KeyInfo]:
    owner = find_tenant(db, tenant)
    with db.session() as s:
        keys = s.scalars(select(ApiKey).where(ApiKey.tenant_id == owner.id).order_by(ApiKey.created_at))
        return [from_row(KeyInfo, k) for k in keys]


def _key(s: Session, key_id: str) -> ApiKey:
    key = s.get(ApiKey, key_id)
    if key is None:
        raise not_found(f"No key {key_id!r}.", code="key_not_found")
    return key


def revoke_key(db: Database, key_id: str, *, actor: str | None = None) -> KeyInfo:
    with db.session() as s:
        key = _key(s, key_id)
        before = audit.describe_key(key)
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        info = from_row(KeyInfo, key)
        if actor is not None:
            audit.key_revoked(s, actor, before, info)
        return info


def rotate_key(db: Database, key_id: str, *, grace_seconds: int = 0, actor: str | None = None) -> NewKey:
    """A new key for the same tenant and label; the old one stops working after the grace period.

    A grace period lets clients switch to the new secret without a moment when neither
    works; 0 revokes the old key at once.
    """
    if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
        raise bad_request(f"grace_seconds must be between 0 and {MAX_GRACE_SECONDS}.", param="grace_seconds")
    now = utcnow()
    with db.session() as s:
        old = _key(s, key_id)
        before = audit.describe_key(old)
        if old.revoked_at is not None:
            raise bad_request(f"Key {key_id!r} is revoked; create a new key instead.", code="key_revoked")
        secret = new_api_key()
        new = ApiKey(
            id=new_id("key"),
            tenant_id=old.tenant_id,
            key_hash=hash_key(secret),
            hint=key_hint(secret),
            name=old.name,
            expires_at=old.expires_at,
        )
        s.add(new)
        if grace_seconds == 0:
            old.revoked_at = now
        else:
            ends = now + timedelta(seconds=grace_seconds)
            old.expires_at = min(old.expires_at, ends) if old.expires_at else ends
        s.flush()
        info = from_row(KeyInfo, new)
        if actor is not None:
            audit.key_rotated(s, actor, key_id, before, info, grace_seconds=grace_seconds)
        return NewKey(info=info, secret=secret)


def authenticate(db: Database, secret: str) -> Caller | None:
    """The tenant a key belongs to, or None for unknown, revoked and expired keys."""
    now = utcnow()
    with db.session() as s:
        row = s.execute(
            select(ApiKey, Tenant.name, Tenant.limits)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == hash_key(secret))
        ).first()
        if row is None:
            return None
        key, tenant_name, tenant_limits = row
        if key.revoked_at is not None:
            return None
        if key.expires_at is not None and key.expires_at <= now:
            return None
        return Caller(
            tenant_id=key.tenant_id,
            tenant_name=tenant_name,
            key_id=key.id,
            limits=TenantLimits.from_json(tenant_limits),
        )


def get_limits(db: Database, tenant: str) -> TenantLimits | None:
    owner = find_tenant(db, tenant)
    with db.session() as s:
        row = s.get(Tenant, owner.id)
        return TenantLimits.from_json(row.limits if row else None)


def set_limits(
    db: Database, tenant: str, limits: TenantLimits | None, *, actor: str | None = None
) -> tuple[TenantLimits | None, TenantLimits | None]:
    """Replace a tenant's limits (None: unlimited); returns (before, after)."""
    owner = find_tenant(db, tenant)
    with db.session() as s:
        row = s.get(Tenant, owner.id)
        if row is None:
            raise not_found(f"No tenant {tenant!r}.", code="tenant_not_found")
        before = TenantLimits.from_json(row.limits)
        row.limits = limits.to_json() if limits is not None and limits.any else None
        after = TenantLimits.from_json(row.limits)
        if actor is not None:
            audit.limits_changed(s, actor, owner, before, after)
        return before, after
