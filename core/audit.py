"""Appending to the audit log (core.models.AuditEvent); reading it is gateway.audit's.

Here, below every package, so the gateway, the CLI, the adapter and job actions
(adapters.promotion, adapters.registry, trainer.jobs) and the trainer write events the
same way: each action appends its event in its own transaction. Append-only: nothing updates or deletes, and
database triggers (migration 0004) refuse UPDATE and DELETE from anyone else.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.db import Database
from core.models import AuditEvent

ADMIN = "admin"
# A tenant's retraining policy (trainer.policy), queueing a job on its own.
POLICY = "policy"


def actor_for_key(key_id: str) -> str:
    return f"key:{key_id}"


def actor_for_job(job_id: str) -> str:
    return f"job:{job_id}"


def record(
    db: Database | Session,
    *,
    actor: str,
    action: str,
    tenant_id: str | None = None,
    target: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Append one event; pass the action's own session to commit both or neither."""
    event = AuditEvent(
        actor=actor[:80],
        action=action,
        tenant_id=tenant_id,
        target=target[:200] if target else None,
        before=before,
        after=after,
    )
    if isinstance(db, Session):
        db.add(event)
        return
    with db.session() as s:
        s.add(event)
