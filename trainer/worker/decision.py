"""What the gates' verdict on a job's candidate means for the tenant, and acting on it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters import promotion
from adapters.registry import VersionInfo
from core import audit
from trainer.gates import Decision
from trainer.jobs import JobInfo
from trainer.policy import PolicyInfo

if TYPE_CHECKING:
    from trainer.worker.loop import Worker


def outcome(decision: Decision, baseline: VersionInfo | None, policy: PolicyInfo) -> str:
    """promoted | canary | candidate | rejected: what the gates' verdict means for this tenant."""
    if not decision.promote:
        return "rejected"
    # A name nothing serves yet has no traffic to protect: its first good version serves.
    if baseline is None:
        return "promoted"
    if not policy.auto_promote:
        return "candidate"
    return "canary" if 0 < policy.canary_fraction < 1 else "promoted"


def apply(w: Worker, job: JobInfo, version: VersionInfo, outcome: str, decision: Decision, policy: PolicyInfo) -> None:
    """Reject, keep, canary or promote the job's version, each action audited as the job's."""
    # Each action records its own audit event, by this job, in the transaction of the change.
    name, n, actor = job.adapter_name, version.version, audit.actor_for_job(job.id)
    by = f"job {job.id}"
    if outcome == "rejected":
        reasons = "; ".join(decision.reasons)
        promotion.reject(w.db, job.tenant_id, name, n, reason=reasons, actor=actor)
        w.event(
            job,
            f"Gates failed; version {n} rejected: {reasons}",
            level="warn",
            data={"reasons": list(decision.reasons)},
        )
    elif outcome == "candidate":
        w.event(
            job,
            f"Gates passed; version {n} stays a candidate (auto-promotion is off "
            f"for this tenant): call it as {name}@v{n}",
        )
    elif outcome == "canary":
        promotion.start_canary(w.db, job.tenant_id, name, n, policy.canary_fraction, actor=actor, by=by)
        w.event(job, f"Gates passed; version {n} serves {policy.canary_fraction:.0%} of {name} as a canary")
    else:
        promotion.promote(w.db, job.tenant_id, name, n, actor=actor, by=by)
        w.event(job, f"Gates passed; {name} now serves version {n}")
