"""Retraining policies and drift: keeping a tenant's adapters as good as when promoted.

Per tenant: how retraining is triggered (off, on demand, after N new feedback items, on
drift, on a schedule), whether a candidate that passes the gates is promoted by itself
(`auto_promote`) or waits for a person, the canary share, and the gates. A triggered run
is an ordinary job (source "policy") and goes through the same evaluation and gates.

Method: a triggered run trains with KTO when the feedback is mostly thumbs up and down
(ratings alone outnumber corrections and preferences, and both good and bad answers are
rated): a rating without a correction is still a signal. Otherwise it trains supervised,
on the corrections and the answers rated good.

With a `reward_grader` (a grader, as a reinforcement job takes it: trainer.rewards), a
triggered run trains with the reinforcement method (GRPO) instead, on the prompts the
adapter's users sent (the interaction log: trainer.datasets.build_from_log), each answer
scored by that grader; no feedback on the answers is needed. Without logged prompts it
falls back to the feedback and the methods above.

With `merge_above_share`, an adapter that carries at least that share of the tenant's chat
traffic (and `merge_min_requests` requests) is merged into the base model by itself:
trainer.merge_policy.

Drift: the share of good ratings (and the correction rate) an adapter version earned in
its first window after promotion is its level; when the most recent window falls below
that level by more than the tolerance, the version has drifted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from core import audit
from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError, bad_request
from core.ids import utcnow
from core.models import Adapter, AdapterVersion, Feedback, Job, TenantPolicy, UTCDateTime
from core.rows import from_row
from core.states import OPEN_JOB_STATUSES
from trainer import datasets, hyperparameters, jobs, rewards
from trainer.feedback import FeedbackSignal, feedback_signal
from trainer.gates import GateConfig
from trainer.graders import Capabilities
from trainer.jobs.methods import MERGE
from trainer.records import Snapshot

# Bounds a stored value must respect: the column is a 32-bit integer on PostgreSQL, and the
# scheduler adds the interval to a datetime (larger values overflow and would stop it).
MAX_MIN_FEEDBACK = 2**31 - 1
MAX_MIN_REQUESTS = MAX_MIN_FEEDBACK
MAX_INTERVAL_HOURS = 24 * 366 * 10
# Requests in the traffic window below which no share triggers a merge: a merged copy costs an
# engine of its own, worth it only for an adapter that is busy, not one that served a handful.
DEFAULT_MERGE_MIN_REQUESTS = 1000

RETRAIN_MODES = ("off", "on_demand", "feedback_count", "drift", "schedule")
# A window must hold this many judged answers before its share of good ones means anything.
MIN_JUDGED = 20
# Drop in share_good (or rise in correction rate) tolerated before calling it drift.
DRIFT_TOLERANCE = 0.10
DRIFT_WINDOW = timedelta(days=7)


@dataclass(frozen=True)
class PolicyInfo:
    tenant_id: str
    retrain: str = "on_demand"
    retrain_min_feedback: int = 50
    retrain_interval_hours: float = 24.0
    auto_promote: bool = False
    canary_fraction: float = 0.0
    gates: dict[str, Any] | None = None
    reward_grader: dict[str, Any] | None = None
    merge_above_share: float | None = None
    merge_min_requests: int = DEFAULT_MERGE_MIN_REQUESTS
    last_triggered_at: datetime | None = None


@dataclass(frozen=True)
class DriftStatus:
    adapter_name: str
    version: int | None
    promoted_level: FeedbackSignal | None
    recent: FeedbackSignal | None
    drifted: bool
    reason: str


def method_for(snapshot: Snapshot) -> str:
    """The method a policy-triggered job trains `snapshot` (built from feedback) with."""
    signals = snapshot.params.get("signals") or {}
    ratings_only = int(signals.get("ratings_only", 0))
    rich = int(signals.get("corrections", 0)) + int(signals.get("preferences", 0))
    labels = {r.label for r in snapshot.train_ratings}
    return "kto" if ratings_only > rich and labels == {True, False} else "supervised"


@dataclass(frozen=True)
class RetrainPlan:
    """What a policy-triggered job trains: its method, its snapshot (None: the run builds it
    from the feedback) and the method's settings (the reinforcement method's grader)."""

    method: str
    dataset_id: str | None = None
    config: dict[str, Any] | None = None


def retrain_plan(db: Database, blobs: BlobStore, tenant_id: str, adapter_name: str) -> RetrainPlan:
    """The plan of a policy-triggered job for `adapter_name`: with a reward grader, reinforcement
    on the adapter's logged prompts; else (or with none logged) what the feedback is made of
    picks the method (method_for). Feedback that cannot make a snapshot now leaves the choice
    to supervised and the snapshot to the run, as for any job."""
    grader = get_policy(db, tenant_id).reward_grader
    if grader is not None:
        try:
            snapshot = datasets.build_from_log(db, blobs, tenant_id, adapter_name)
            jobs.training_examples(snapshot, hyperparameters.REINFORCEMENT)
            return RetrainPlan(hyperparameters.REINFORCEMENT, snapshot.id, {"grader": grader})
        except TailorError:
            pass
    try:
        snapshot = jobs.feedback_snapshot(db, blobs, tenant_id, adapter_name)
        method = method_for(snapshot)
        jobs.training_examples(snapshot, method)
    except TailorError:
        return RetrainPlan("supervised")
    return RetrainPlan(method, snapshot.id)


def _info(row: TenantPolicy) -> PolicyInfo:
    return from_row(PolicyInfo, row, gates=row.gates or {})


def _current(row: TenantPolicy | None, tenant_id: str) -> PolicyInfo:
    # A tenant that never set one has the defaults.
    return _info(row) if row is not None else PolicyInfo(tenant_id=tenant_id, gates=GateConfig().to_dict())


def get_policy(db: Database, tenant_id: str) -> PolicyInfo:
    with db.session() as s:
        return _current(s.get(TenantPolicy, tenant_id), tenant_id)


def describe(policy: PolicyInfo) -> dict[str, Any]:
    """A policy as its audit events show it, before and after a change."""
    # last_triggered_at is the scheduler's bookkeeping, not a setting anyone changes.
    return {k: v for k, v in asdict(policy).items() if k not in ("tenant_id", "last_triggered_at")}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _is_count(value: Any, highest: int) -> bool:
    return isinstance(value, int) and 1 <= value <= highest


# Every field's check and its 400's message (the field is the error's `param`); gates and
# reward_grader have checks of their own, which name the part at fault.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "retrain": (lambda v: v in RETRAIN_MODES, f"retrain must be one of {', '.join(RETRAIN_MODES)}."),
    "retrain_min_feedback": (
        lambda v: _is_count(v, MAX_MIN_FEEDBACK),
        f"retrain_min_feedback must be an integer from 1 to {MAX_MIN_FEEDBACK}.",
    ),
    "retrain_interval_hours": (
        lambda v: _is_number(v) and 0 < v <= MAX_INTERVAL_HOURS,
        f"retrain_interval_hours must be above 0 and at most {MAX_INTERVAL_HOURS}.",
    ),
    "canary_fraction": (lambda v: _is_number(v) and 0 <= v < 1, "canary_fraction must be in [0, 1)."),
    "auto_promote": (lambda v: isinstance(v, bool), "auto_promote must be true or false."),
    "merge_above_share": (
        lambda v: v is None or (_is_number(v) and 0 < v <= 1),
        "merge_above_share must be above 0 and at most 1, or null (no merging by traffic share).",
    ),
    "merge_min_requests": (
        lambda v: _is_count(v, MAX_MIN_REQUESTS),
        f"merge_min_requests must be an integer from 1 to {MAX_MIN_REQUESTS}.",
    ),
}
# true/false are ints to Python, never a count or a share to a tenant.
_NUMBERS = (
    "retrain_min_feedback",
    "retrain_interval_hours",
    "canary_fraction",
    "merge_above_share",
    "merge_min_requests",
)
_FIELDS = {*_CHECKS, "gates", "reward_grader"}


def _check(changes: dict[str, Any], key: str) -> None:
    valid, message = _CHECKS[key]
    if key in changes and not valid(changes[key]):
        raise bad_request(message, param=key)


def _check_fields(changes: dict[str, Any]) -> None:
    """400 (naming the field) for an unknown field or a value its check refuses."""
    unknown = set(changes) - _FIELDS
    if unknown:
        raise bad_request(f"Unknown policy fields: {', '.join(sorted(unknown))}.", param=sorted(unknown)[0])
    _check(changes, "retrain")
    for key in _NUMBERS:
        if isinstance(changes.get(key), bool):
            raise bad_request(f"{key} must be a number, not true/false.", param=key)
    for key in _CHECKS:
        _check(changes, key)


def set_policy(
    db: Database,
    tenant_id: str,
    changes: dict[str, Any],
    *,
    actor: str | None = None,
    tenant_name: str | None = None,
    grader_capabilities: Capabilities = Capabilities(),
) -> PolicyInfo:
    """Update some fields of a tenant's policy; everything is validated before anything is stored.

    With an `actor`, the change's audit event (every field before and after) is written in the
    same transaction: both are kept or neither. A `reward_grader` is checked as a reinforcement
    job's grader is (against `grader_capabilities`); null removes it, as null turns
    `merge_above_share` off.
    """
    _check_fields(changes)
    if "gates" in changes:
        changes = {**changes, "gates": GateConfig.from_dict(changes["gates"]).to_dict()}
    if changes.get("reward_grader") is not None:
        grader = rewards.check_grader(changes["reward_grader"], grader_capabilities, param="reward_grader")
        changes = {**changes, "reward_grader": grader}
    with db.session() as s:
        row = s.get(TenantPolicy, tenant_id)
        before = _current(row, tenant_id)
        if row is None:
            row = TenantPolicy(
                tenant_id=tenant_id,
                retrain="on_demand",
                retrain_min_feedback=50,
                retrain_interval_hours=24.0,
                auto_promote=False,
                canary_fraction=0.0,
                gates=GateConfig().to_dict(),
            )
            s.add(row)
        for key, value in changes.items():
            setattr(row, key, value)
        s.flush()
        after = _info(row)
        if actor is not None:
            audit.record(
                s,
                actor=actor,
                action="policy.update",
                tenant_id=tenant_id,
                target=tenant_name,
                before=describe(before),
                after=describe(after),
            )
        return after


def drift(
    db: Database,
    tenant_id: str,
    adapter_name: str,
    *,
    now: datetime | None = None,
    window: timedelta = DRIFT_WINDOW,
    min_judged: int = MIN_JUDGED,
    tolerance: float = DRIFT_TOLERANCE,
) -> DriftStatus:
    now = now or utcnow()
    with db.session() as s:
        row = s.execute(
            select(AdapterVersion.id, AdapterVersion.version, AdapterVersion.promoted_at)
            .join(Adapter, Adapter.active_version_id == AdapterVersion.id)
            .where(Adapter.tenant_id == tenant_id, Adapter.name == adapter_name)
        ).first()
    if row is None or row.promoted_at is None:
        return DriftStatus(adapter_name, None, None, None, False, "no promoted version")
    level = feedback_signal(db, tenant_id, row.id, since=row.promoted_at, until=row.promoted_at + window)
    recent = feedback_signal(db, tenant_id, row.id, since=max(now - window, row.promoted_at + window))
    drifted, reason = _compare(level, recent, min_judged=min_judged, tolerance=tolerance)
    return DriftStatus(adapter_name, row.version, level, recent, drifted, reason)


def _compare(level: FeedbackSignal, recent: FeedbackSignal, *, min_judged: int, tolerance: float) -> tuple[bool, str]:
    """(drifted, why): recent feedback against the promoted version's level, once both are established."""
    if level.judged < min_judged or level.share_good is None:
        return False, f"level not established yet ({level.judged}/{min_judged} judged answers)"
    if recent.judged < min_judged or recent.share_good is None:
        return False, f"too little recent feedback ({recent.judged}/{min_judged} judged answers)"
    if recent.share_good < level.share_good - tolerance:
        return True, f"share of good answers fell from {level.share_good:.2f} to {recent.share_good:.2f}"
    if (
        level.correction_rate is not None
        and recent.correction_rate is not None
        and recent.correction_rate > level.correction_rate + tolerance
    ):
        return True, f"correction rate rose from {level.correction_rate:.2f} to {recent.correction_rate:.2f}"
    return False, "within tolerance of its promoted level"


@dataclass(frozen=True)
class Trigger:
    tenant_id: str
    adapter_name: str
    reason: str


def due_retrains(db: Database, *, now: datetime | None = None) -> list[Trigger]:
    """Which (tenant, adapter) pairs their policy says to retrain now.

    Counted per adapter name since that name's last training job (whatever started it; a
    merge is none), so retraining one adapter does not reset another's count. Only names that received
    feedback are considered, never one with a job queued or running, and `drift` and
    `schedule` wait `retrain_interval_hours` after the last job, so a version that stays
    drifted (say its retrained candidate was rejected) is not retrained over and over.
    """
    now = now or utcnow()
    triggers: list[Trigger] = []
    with db.session() as s:
        policies = [
            _info(p)
            for p in s.scalars(
                select(TenantPolicy).where(TenantPolicy.retrain.in_(("feedback_count", "drift", "schedule")))
            )
        ]
    for policy in policies:
        with db.session() as s:
            last_jobs = {
                name: (started, busy)
                for name, started, busy in s.execute(
                    select(
                        Job.adapter_name,
                        # typed, so the maximum comes back timezone-aware like the column
                        func.max(Job.created_at, type_=UTCDateTime()),
                        func.max(case((Job.status.in_(OPEN_JOB_STATUSES), 1), else_=0)),
                    )
                    # A merge (trainer.merge) trains nothing: it neither restarts the count nor holds
                    # a retraining back.
                    .where(Job.tenant_id == policy.tenant_id, Job.method != MERGE)
                    .group_by(Job.adapter_name)
                )
            }
            names = s.scalars(
                select(Feedback.model)
                .join(Adapter, (Adapter.tenant_id == Feedback.tenant_id) & (Adapter.name == Feedback.model))
                .where(Feedback.tenant_id == policy.tenant_id)
                .distinct()
            ).all()
        for name in names:
            last, busy = last_jobs.get(name, (None, 0))
            if busy:
                continue
            rested = last is None or now - last >= timedelta(hours=policy.retrain_interval_hours)
            reason = None
            if policy.retrain == "feedback_count":
                new_items = _feedback_since(db, policy.tenant_id, name, last)
                if new_items >= policy.retrain_min_feedback:
                    reason = f"{new_items} new feedback items (threshold {policy.retrain_min_feedback})"
            elif policy.retrain == "schedule" and rested and _feedback_since(db, policy.tenant_id, name, last):
                reason = f"scheduled every {policy.retrain_interval_hours:g} h"
            elif policy.retrain == "drift" and rested:
                status = drift(db, policy.tenant_id, name, now=now)
                reason = f"drift: {status.reason}" if status.drifted else None
            if reason:
                triggers.append(Trigger(policy.tenant_id, name, reason))
    return triggers


def _feedback_since(db: Database, tenant_id: str, name: str, since: datetime | None) -> int:
    query = select(func.count()).where(Feedback.tenant_id == tenant_id, Feedback.model == name)
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    with db.session() as s:
        return int(s.scalar(query) or 0)


def mark_triggered(db: Database, tenant_id: str, *, now: datetime | None = None) -> None:
    with db.session() as s:
        row = s.get(TenantPolicy, tenant_id)
        if row is not None:
            row.last_triggered_at = now or utcnow()


def policy_dict(info: PolicyInfo) -> dict[str, Any]:
    return asdict(info)
