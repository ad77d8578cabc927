"""How a change to a tenant's adapter name reads in the audit log: one shape for every `adapter.*` event.

Every action that changes what a name holds or serves (registering, promoting, canaries,
rollback, rejecting, deleting a version or the whole name) records its event here, in the
action's own transaction, whoever acts: a tenant's key, the admin key, the CLI, the
console or a trainer job (core.audit names the actors). `before` and `after` describe the
name (`describe_adapter`); what the action was about beyond that (the version registered
or deleted, why one was rejected) joins `after`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from core import audit

if TYPE_CHECKING:
    # Types only: the registry records its own registrations through this module.
    from adapters.registry import AdapterInfo, VersionInfo


def describe_adapter(adapter: AdapterInfo | None) -> dict[str, Any] | None:
    """What a name serves: the part promotions, canaries and uploads change."""
    if adapter is None:
        return None
    return {
        "active_version": adapter.active_version,
        "canary_version": adapter.canary_version,
        "canary_fraction": adapter.canary_fraction,
        "versions": [v.version for v in adapter.versions],
    }


def describe_version(version: VersionInfo) -> dict[str, Any]:
    return {
        "version": version.version,
        "digest": version.digest,
        "rank": version.rank,
        "size_bytes": version.size_bytes,
        "state": version.state,
        "source": version.source,
        "kind": version.kind,
    }


def record_change(
    s: Session,
    *,
    actor: str,
    action: str,
    tenant_id: str,
    name: str,
    before: AdapterInfo | None,
    after: AdapterInfo | None,
    **extra: Any,
) -> None:
    """Append `action` on name `name` to the audit log in the action's session `s`."""
    described = describe_adapter(after)
    audit.record(
        s,
        actor=actor,
        action=action,
        tenant_id=tenant_id,
        target=name,
        before=describe_adapter(before),
        after={**(described or {}), **extra} if described is not None or extra else None,
    )
