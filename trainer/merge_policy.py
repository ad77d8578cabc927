"""Merging by policy: an adapter that carries a large share of a tenant's traffic is merged into
the base model by itself.

LoRA costs throughput on every request it serves (trainer.merge); a merged copy costs an engine
of its own. Worth it for the adapter most of a tenant's requests go to, so the tenant's policy
(trainer.policy) names the share: `merge_above_share`. The worker's policy pass (queue_merges)
then, per tenant with one, measures each name's share of the tenant's chat requests in the
traffic window and queues the merge (trainer.merge.request_merge, audited as the policy's) of
each active adapter version at or above the share that served at least `merge_min_requests`
of them, unless that version's merge is already queued, running or done. The merged version
serves at once when the policy has `auto_promote`; else it waits for the tenant to promote it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from adapters import promotion
from core import audit
from core.db import Database
from core.errors import TailorError
from core.ids import utcnow
from core.models import Interaction, Job, TenantPolicy
from core.quotas import Quotas
from core.states import JobStatus, VersionKind
from trainer import job_records
from trainer.datasets.from_feedback import CHAT_FORM_ENDPOINTS
from trainer.jobs.methods import MERGE
from trainer.merge import MergeRequest, request_merge
from trainer.policy import PolicyInfo, get_policy

log = logging.getLogger("tailor.trainer")

# The traffic a share is measured over: a whole day, so that a busy hour (or a quiet night)
# does not decide alone whether an adapter is worth an engine of its own.
TRAFFIC_WINDOW = timedelta(hours=24)
WINDOW_HOURS = TRAFFIC_WINDOW.total_seconds() / 3600
# How often a worker looks: a day's share moves little within an hour, and each look counts a
# day of requests of every tenant with the option.
PASS_EVERY_S = 3600.0
# A failed merge of a version is tried again only after this long: what made it fail (the
# model over the size limit, say) may well still be there, and each try costs a worker a merge.
RETRY_FAILED_AFTER = TRAFFIC_WINDOW


@dataclass(frozen=True)
class TrafficShare:
    """One model name's chat requests in the window, and their share of the tenant's."""

    name: str
    requests: int
    share: float


@dataclass(frozen=True)
class MergeTrigger:
    tenant_id: str
    adapter_name: str
    version: int
    activate: bool
    reason: str


def traffic_shares(
    db: Database, tenant_id: str, *, now: datetime | None = None, window: timedelta = TRAFFIC_WINDOW
) -> list[TrafficShare]:
    """Each name's share of the tenant's answered chat requests in the `window` before `now`,
    busiest first. A pinned `name@vN` counts as `name`; the base model's requests count in the
    whole but are nobody's share worth merging."""
    now = now or utcnow()
    query = (
        select(Interaction.model, func.count())
        .where(
            Interaction.tenant_id == tenant_id,
            Interaction.endpoint.in_(CHAT_FORM_ENDPOINTS),
            Interaction.created_at >= now - window,
            Interaction.created_at < now,
            # A refused request cost no engine any throughput.
            Interaction.status_code < 400,
        )
        .group_by(Interaction.model)
    )
    counts: dict[str, int] = {}
    with db.session() as s:
        for model, n in s.execute(query):
            name = model.partition("@v")[0]
            counts[name] = counts.get(name, 0) + int(n)
    total = sum(counts.values())
    shares = [TrafficShare(name, n, n / total) for name, n in counts.items()]
    return sorted(shares, key=lambda t: (-t.requests, t.name))


def merge_pending_or_done(db: Database, tenant_id: str, name: str, version_id: str, *, now: datetime) -> bool:
    """Whether a merge of the version `version_id` is queued, running or done (a cancelled one
    too: a person stopped it, the policy does not overrule them), or failed within
    RETRY_FAILED_AFTER."""
    query = select(Job.config, Job.status, Job.created_at, Job.finished_at).where(
        Job.tenant_id == tenant_id, Job.method == MERGE, Job.adapter_name == name
    )
    with db.session() as s:
        merges = s.execute(query).all()
    for config, status, created_at, finished_at in merges:
        if MergeRequest.from_json(config or {}).version_id != version_id:
            continue
        if status != JobStatus.FAILED or now - (finished_at or created_at) < RETRY_FAILED_AFTER:
            return True
    return False


def _reason(share: TrafficShare, policy: PolicyInfo) -> str:
    return (
        f"{share.share:.0%} of the tenant's chat requests in the last {WINDOW_HOURS:g} h ({share.requests}), "
        f"threshold {policy.merge_above_share:.0%} and {policy.merge_min_requests} requests"
    )


def tenant_merges(db: Database, policy: PolicyInfo, *, now: datetime) -> list[MergeTrigger]:
    """The merges `policy` (one with merge_above_share) calls for now."""
    threshold = policy.merge_above_share
    if threshold is None:
        return []
    triggers = []
    for share in traffic_shares(db, policy.tenant_id, now=now):
        if share.share < threshold or share.requests < policy.merge_min_requests:
            continue
        # None for the base model, a name not the tenant's or serving nothing.
        active = promotion.active_version(db, policy.tenant_id, share.name)
        if active is None or active.kind != VersionKind.ADAPTER:  # a whole model has nothing to merge
            continue
        if merge_pending_or_done(db, policy.tenant_id, share.name, active.id, now=now):
            continue
        reason = _reason(share, policy)
        triggers.append(MergeTrigger(policy.tenant_id, share.name, active.version, policy.auto_promote, reason))
    return triggers


def due_merges(db: Database, *, now: datetime | None = None) -> list[MergeTrigger]:
    """The merges every tenant's policy calls for now."""
    now = now or utcnow()
    with db.session() as s:
        tenants = s.scalars(select(TenantPolicy.tenant_id).where(TenantPolicy.merge_above_share.is_not(None))).all()
    return [t for tenant_id in tenants for t in tenant_merges(db, get_policy(db, tenant_id), now=now)]


def queue_merges(
    db: Database,
    *,
    base_model: str,
    quotas: Quotas,
    now: datetime | None = None,
    other_bases: Collection[str] = (),
) -> list[str]:
    """Queue the merges tenants' policies call for now (due_merges), each recorded as the
    policy's `adapter.merge`; the ids of the merges queued. One that cannot be queued (the
    tenant's queue is full, the version just went away) is logged and tried on the next pass."""
    queued = []
    for trigger in due_merges(db, now=now):
        try:
            info = request_merge(
                db,
                trigger.tenant_id,
                trigger.adapter_name,
                version=trigger.version,
                activate=trigger.activate,
                actor=audit.POLICY,
                base_model=base_model,
                quotas=quotas,
                other_bases=other_bases,
            )
        except TailorError as exc:
            log.warning("policy merge of %s/%s not queued: %s", trigger.tenant_id, trigger.adapter_name, exc.message)
            continue
        job_records.add_event(db, info.id, f"Queued by the tenant's merge policy: {trigger.reason}.")
        queued.append(info.id)
    return queued
