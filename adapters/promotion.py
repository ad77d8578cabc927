"""Candidates, canaries, promotion and rollback of a tenant's adapter versions.

Promotion is one transaction that moves the name's alias to another version. Every action
here takes who acts (`actor`, core.audit) and writes its audit event (adapters.audit_log)
in the transaction of the change, and locks the adapter's row first (adapters.activation),
so concurrent promotions, canaries and rollbacks of one name take turns. Requests
already running keep the version they resolved (each version has its own engine name),
new requests get the new one, and the old version stays stored for instant rollback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters import registry
from adapters.activation import end_canary, lock_adapter, serve
from adapters.audit_log import describe_version, record_change
from adapters.registry import AdapterInfo, VersionInfo
from core.db import Database
from core.errors import TailorError, bad_request, not_found
from core.models import Adapter, AdapterVersion
from core.rows import from_row
from core.states import UNSERVABLE_VERSION_STATES, VersionKind, VersionState


@dataclass(frozen=True)
class VersionLineage:
    version: int
    id: str
    state: VersionState
    source: str
    digest: str
    job_id: str | None
    dataset_id: str | None
    parent_version_id: str | None
    metrics: dict[str, object] | None
    created_at: datetime
    promoted_at: datetime | None
    promoted_by: str | None
    serving: str | None  # "active", "canary" or None
    kind: VersionKind = VersionKind.ADAPTER


def _adapter(s: Session, tenant_id: str, name: str) -> Adapter:
    adapter = s.scalar(select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name))
    if adapter is None:
        raise registry.model_not_found(name)
    return adapter


def _locked(s: Session, tenant_id: str, name: str) -> Adapter:
    # Locked before anything is read, so concurrent actions on one name take turns.
    adapter = lock_adapter(s, tenant_id, name)
    if adapter is None:
        raise registry.model_not_found(name)
    return adapter


def _version(adapter: Adapter, version: int) -> AdapterVersion:
    target = next((v for v in adapter.versions if v.version == version), None)
    if target is None:
        raise not_found(f"Adapter {adapter.name!r} has no version {version}.", code="version_not_found")
    if target.state in UNSERVABLE_VERSION_STATES:
        raise bad_request(
            f"Version {version} of {adapter.name!r} is {target.state} and cannot serve.", code="version_not_servable"
        )
    return target


def _change(
    db: Database,
    tenant_id: str,
    name: str,
    *,
    actor: str,
    action: str,
    apply: Callable[[Adapter], dict[str, Any] | None],
) -> AdapterInfo:
    """Lock `name`, `apply` one change to it, and record the change as `action` by `actor`,
    all in one transaction: the event and the change are committed together or not at all.
    `apply` may return what joins the event's `after` besides the name's new state."""
    with db.session() as s:
        adapter = _locked(s, tenant_id, name)
        before = registry.adapter_info(adapter)
        extra = apply(adapter) or {}
        s.flush()
        after = registry.adapter_info(adapter)
        record_change(
            s, actor=actor, action=action, tenant_id=tenant_id, name=name, before=before, after=after, **extra
        )
        return after


def promote(
    db: Database,
    tenant_id: str,
    name: str,
    version: int,
    *,
    actor: str,
    by: str | None = None,
    demote_to: VersionState = VersionState.RETIRED,
) -> AdapterInfo:
    """Serve `version` as `name` (a running canary ends). `by`: the version's `promoted_by`
    in its lineage, when it is not `actor` itself."""

    def apply(adapter: Adapter) -> None:
        serve(adapter, _version(adapter, version), by=by or actor, demote_to=demote_to)

    return _change(db, tenant_id, name, actor=actor, action="adapter.promote", apply=apply)


def start_canary(
    db: Database, tenant_id: str, name: str, version: int, fraction: float, *, actor: str, by: str | None = None
) -> AdapterInfo:
    if not 0.0 < fraction < 1.0:
        raise bad_request("A canary fraction must be between 0 and 1 (exclusive).", param="fraction")

    def apply(adapter: Adapter) -> None:
        target = _version(adapter, version)
        if target.id == adapter.active_version_id:
            raise bad_request(f"Version {version} already serves all of {name!r}.", param="version")
        if adapter.active_version_id is None:
            raise bad_request(f"{name!r} has no active version to split traffic with; promote instead.")
        end_canary(adapter)
        target.state = VersionState.CANARY
        target.promoted_by = by or actor
        adapter.canary_version_id, adapter.canary_fraction = target.id, fraction

    return _change(db, tenant_id, name, actor=actor, action="adapter.canary.start", apply=apply)


def stop_canary(db: Database, tenant_id: str, name: str, *, actor: str) -> AdapterInfo:
    return _change(
        db, tenant_id, name, actor=actor, action="adapter.canary.stop", apply=lambda adapter: end_canary(adapter)
    )


def rollback(db: Database, tenant_id: str, name: str, *, actor: str, by: str | None = None) -> AdapterInfo:
    """Serve the version that was active before the current one.

    The version rolled back from is marked `rolled_back`, so a second rollback goes
    further back in history instead of toggling between the last two. The choice and the
    switch are one locked transaction: two rollbacks at once go back two steps, never
    both to the same version.
    """

    def apply(adapter: Adapter) -> None:
        serve(adapter, _previous(adapter), by=by or actor, demote_to=VersionState.ROLLED_BACK)

    return _change(db, tenant_id, name, actor=actor, action="adapter.rollback", apply=apply)


def _previous(adapter: Adapter) -> AdapterVersion:
    current = next((v for v in adapter.versions if v.id == adapter.active_version_id), None)
    earlier = [
        v
        for v in adapter.versions
        if v.promoted_at is not None
        and v.id != adapter.active_version_id
        and v.state == VersionState.RETIRED
        and (current is None or current.promoted_at is None or _ts(v.promoted_at) <= _ts(current.promoted_at))
    ]
    if not earlier:
        raise bad_request(
            f"{adapter.name!r} has no earlier promoted version to roll back to.", code="no_previous_version"
        )
    return max(earlier, key=lambda v: (_ts(v.promoted_at), v.version))


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def reject(db: Database, tenant_id: str, name: str, version: int, *, reason: str, actor: str) -> AdapterInfo:
    """Mark `version` rejected (it can never serve); the reason stays in its metrics and the event."""

    def apply(adapter: Adapter) -> dict[str, Any]:
        target = next((v for v in adapter.versions if v.version == version), None)
        if target is None:
            raise not_found(f"Adapter {name!r} has no version {version}.", code="version_not_found")
        if target.id == adapter.active_version_id:
            raise TailorError(409, f"Version {version} of {name!r} is serving; roll back first.", code="conflict")
        target.state = VersionState.REJECTED
        target.metrics = {**(target.metrics or {}), "rejected_reason": reason}
        return {"version": describe_version(registry.version_info(adapter, target)), "reason": reason}

    return _change(db, tenant_id, name, actor=actor, action="adapter.reject", apply=apply)


def active_version(db: Database, tenant_id: str, name: str) -> VersionInfo | None:
    with db.session() as s:
        adapter = s.scalar(select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name))
        if adapter is None or adapter.active_version_id is None:
            return None
        current = s.get(AdapterVersion, adapter.active_version_id)
        return registry.version_info(adapter, current) if current else None


def lineage(db: Database, tenant_id: str, name: str) -> list[VersionLineage]:
    with db.session() as s:
        adapter = _adapter(s, tenant_id, name)
        return [
            from_row(
                VersionLineage,
                v,
                state=VersionState(v.state),
                serving=_serving(adapter, v),
                kind=registry.version_kind(v),
            )
            for v in adapter.versions
        ]


def _serving(adapter: Adapter, v: AdapterVersion) -> str | None:
    if v.id == adapter.active_version_id:
        return "active"
    return "canary" if v.id == adapter.canary_version_id else None
