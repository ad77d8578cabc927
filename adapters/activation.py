"""Switching which version an adapter name serves: the one state change promotion,
rollback and activating registrations share.

Every switch reads the adapter and its versions, decides, and writes. Two switches that
read before either wrote would both succeed and leave two versions `active`, so each
runs on the adapter row locked by `lock_adapter` first: concurrent switches of one name
queue, and each decides on what the one before it committed.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import lock_row
from core.ids import utcnow
from core.models import Adapter, AdapterVersion
from core.states import VersionState


def lock_adapter(s: Session, tenant_id: str, name: str) -> Adapter | None:
    """The tenant's adapter `name`, locked until `s` commits; None if there is none."""
    return lock_row(s, select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name))


def serve(
    adapter: Adapter, target: AdapterVersion, *, by: str | None, demote_to: VersionState = VersionState.RETIRED
) -> None:
    """Make `target` the one version `adapter` serves; `adapter` must be locked (lock_adapter)."""
    for v in adapter.versions:
        # Every other `active` one, not only the one active_version_id names: a version left
        # active by a switch that raced before these locks existed is demoted here too.
        if v.id != target.id and (v.state == VersionState.ACTIVE or v.id == adapter.active_version_id):
            v.state = demote_to
    target.state = VersionState.ACTIVE
    target.promoted_at = utcnow()
    target.promoted_by = by
    adapter.active_version_id = target.id
    # A canary was measured against the version that served before; after a switch its
    # comparison means nothing, so it ends and goes back to being a candidate.
    end_canary(adapter)


def end_canary(adapter: Adapter) -> None:
    """Stop splitting `adapter`'s traffic; the canary version becomes a candidate again."""
    for v in adapter.versions:
        if v.state == VersionState.CANARY and v.id != adapter.active_version_id:
            v.state = VersionState.CANDIDATE
    adapter.canary_version_id, adapter.canary_fraction = None, 0.0
