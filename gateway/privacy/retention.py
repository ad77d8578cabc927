"""Retention: what each tenant's retention period has expired is hidden at once and deleted
by a periodic run (see the package docstring for what goes and what stays)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import Database
from core.ids import as_utc, utcnow
from core.models import Feedback, Interaction, StoredResponse, Tenant
from gateway import audit

from .scope import CHUNK, delete_chunked

log = logging.getLogger("tailor.privacy")

RETENTION_ACTOR = "system:retention"


@dataclass
class RetentionResult:
    interactions: int = 0
    feedback: int = 0
    responses: int = 0
    by_tenant: dict[str, dict[str, int]] = field(default_factory=dict)


def retention_cutoff(s: Session, tenant_id: str, now: datetime | None = None) -> datetime | None:
    """The oldest creation time the tenant's retention period still keeps (None: no period).

    What the API serves back is hidden from this moment on; `apply_retention` deletes it later.
    """
    days = s.scalar(select(Tenant.retention_days).where(Tenant.id == tenant_id))
    return None if days is None else as_utc(now or utcnow()) - timedelta(days=int(days))


def apply_retention(db: Database, now: datetime | None = None, *, chunk: int = CHUNK) -> RetentionResult:
    """Delete what each tenant's retention period has expired (see the package docstring)."""
    now = as_utc(now or utcnow())
    with db.session() as s:
        periods = list(s.execute(select(Tenant.id, Tenant.retention_days).where(Tenant.retention_days.is_not(None))))
    result = RetentionResult()
    for tenant_id, days in periods:
        cutoff = now - timedelta(days=int(days))
        expired = (Interaction.tenant_id == tenant_id) & (Interaction.created_at < cutoff)
        # Feedback first: its condition reads the interactions about to go.
        about_expired = Feedback.interaction_id.in_(select(Interaction.id).where(expired))
        feedback_expired = (Feedback.tenant_id == tenant_id) & ((Feedback.created_at < cutoff) | about_expired)
        feedback = delete_chunked(db, Feedback.id, feedback_expired, chunk)
        interactions = delete_chunked(db, Interaction.id, expired, chunk)
        responses_expired = (StoredResponse.tenant_id == tenant_id) & (StoredResponse.created_at < cutoff)
        responses = delete_chunked(db, StoredResponse.id, responses_expired, chunk)
        if feedback or interactions or responses:
            counts = {"interactions": interactions, "feedback": feedback, "responses": responses}
            result.by_tenant[tenant_id] = counts
            result.interactions += interactions
            result.feedback += feedback
            result.responses += responses
            audit.record(
                db,
                actor=RETENTION_ACTOR,
                action="tenant.retention",
                tenant_id=tenant_id,
                after={**counts, "retention_days": int(days), "cutoff": cutoff.isoformat()},
            )
    return result


async def retention_loop(db: Database, interval_s: float = 3600.0) -> None:
    """Apply retention now and every `interval_s` until cancelled (started by the app's
    lifespan, or once per host by `tailor serve --workers`' parent)."""
    while True:
        try:
            result = await asyncio.to_thread(apply_retention, db, utcnow())
            if result.by_tenant:
                log.info(
                    "retention deleted %d interactions, %d feedback rows and %d stored responses of %d tenants",
                    result.interactions,
                    result.feedback,
                    result.responses,
                    len(result.by_tenant),
                )
        except Exception:  # a failed run is retried next interval; it must not end the loop
            log.exception("retention run failed")
        await asyncio.sleep(interval_s)
