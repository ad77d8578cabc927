"""Retraining and promotion policy per tenant, and the drift of an adapter's feedback."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from adapters import registry
from gateway import audit, tenants
from gateway.deps import AdminDep, CallerDep, ServicesDep
from gateway.services import Services
from trainer import policy

router = APIRouter(tags=["policy"])
admin_router = APIRouter(prefix="/admin/tenants/{tenant}", tags=["admin"], dependencies=[AdminDep])


class PolicyIn(BaseModel):
    """Fields to change; omitted ones keep their value."""

    model_config = ConfigDict(extra="forbid", strict=True)

    retrain: Literal["off", "on_demand", "feedback_count", "drift", "schedule"] | None = None
    retrain_min_feedback: int | None = Field(None, ge=1, le=policy.MAX_MIN_FEEDBACK)
    retrain_interval_hours: float | None = Field(None, gt=0, le=policy.MAX_INTERVAL_HOURS, allow_inf_nan=False)
    auto_promote: bool | None = Field(None, description="Promote a candidate that passes the gates without a person.")
    canary_fraction: float | None = Field(None, ge=0, lt=1, description="Passing candidates first serve this share.")
    gates: dict[str, Any] | None = Field(None, description="primary_metric, min_improvement, noise, min_examples.")


class PolicyOut(BaseModel):
    retrain: str
    retrain_min_feedback: int
    retrain_interval_hours: float
    auto_promote: bool
    canary_fraction: float
    gates: dict[str, Any] | None
    last_triggered_at: datetime | None


class SignalOut(BaseModel):
    judged: int
    good: int
    bad: int
    corrections: int
    share_good: float | None
    correction_rate: float | None


class DriftOut(BaseModel):
    adapter_name: str
    version: int | None
    promoted_level: SignalOut | None
    recent: SignalOut | None
    drifted: bool
    reason: str


def _out(info: policy.PolicyInfo) -> PolicyOut:
    data = asdict(info)
    data.pop("tenant_id")
    return PolicyOut(**data)


def _update(services: Services, tenant_id: str, tenant_name: str, body: PolicyIn, *, actor: str) -> PolicyOut:
    """Change the policy and record it in the audit log, with every field before and after."""
    before = policy.get_policy(services.db, tenant_id)
    after = policy.set_policy(services.db, tenant_id, body.model_dump(exclude_none=True))
    audit.policy_changed(services.db, actor, tenant_id=tenant_id, tenant_name=tenant_name, before=before, after=after)
    return _out(after)


@router.get("/v1/policy", response_model=PolicyOut, summary="Your retraining and promotion policy")
def get_own(services: ServicesDep, caller: CallerDep) -> PolicyOut:
    return _out(policy.get_policy(services.db, caller.tenant_id))


@router.put("/v1/policy", response_model=PolicyOut, summary="Change your retraining and promotion policy")
def put_own(body: PolicyIn, services: ServicesDep, caller: CallerDep) -> PolicyOut:
    return _update(services, caller.tenant_id, caller.tenant_name, body, actor=audit.actor_for_key(caller.key_id))


@router.get(
    "/v1/adapters/{name}/drift",
    response_model=DriftOut,
    summary="Feedback on the active version now, against the level it was promoted at",
)
def get_drift(name: str, services: ServicesDep, caller: CallerDep) -> DriftOut:
    registry.get_adapter(services.db, caller.tenant_id, name)  # 404 for unknown and foreign names
    return DriftOut(**asdict(policy.drift(services.db, caller.tenant_id, name)))


@admin_router.get("/policy", response_model=PolicyOut)
def admin_get(tenant: str, services: ServicesDep) -> PolicyOut:
    return _out(policy.get_policy(services.db, tenants.find_tenant(services.db, tenant).id))


@admin_router.put("/policy", response_model=PolicyOut)
def admin_put(tenant: str, body: PolicyIn, services: ServicesDep) -> PolicyOut:
    owner = tenants.find_tenant(services.db, tenant)
    return _update(services, owner.id, owner.name, body, actor=audit.ADMIN)
