"""Retraining and promotion policy per tenant, and the drift of an adapter's feedback."""

from __future__ import annotations

import anyio.from_thread
from fastapi import APIRouter

from adapters import registry
from gateway import audit, tenants
from gateway.deps import AdminDep, CallerDep, ServicesDep
from gateway.protocol.policy import DriftOut, PolicyIn, PolicyOut
from gateway.services import Services
from trainer import policy
from trainer.graders import Capabilities

router = APIRouter(tags=["policy"])
admin_router = APIRouter(prefix="/admin/tenants/{tenant}", tags=["admin"], dependencies=[AdminDep])

# Fields whose null means something (removed, off): a null sent for one is a change.
NULLABLE = {"reward_grader", "merge_above_share"}


def _update(services: Services, tenant_id: str, tenant_name: str, body: PolicyIn, *, actor: str) -> PolicyOut:
    """Change the policy; its audit event (every field before and after) is in the same transaction."""
    changes = body.model_dump(exclude_none=True)
    changes |= {key: getattr(body, key) for key in NULLABLE & body.model_fields_set}
    capabilities = Capabilities()
    if "reward_grader" in body.model_fields_set:
        # What the grader routes check a grader against (a sync route: on a thread of the event loop's).
        capabilities = anyio.from_thread.run(services.graders.capabilities)
    after = policy.set_policy(
        services.db, tenant_id, changes, actor=actor, tenant_name=tenant_name, grader_capabilities=capabilities
    )
    return PolicyOut.model_validate(after)


@router.get("/v1/policy", response_model=PolicyOut, summary="Your retraining and promotion policy")
def get_own(services: ServicesDep, caller: CallerDep) -> PolicyOut:
    return PolicyOut.model_validate(policy.get_policy(services.db, caller.tenant_id))


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
    return DriftOut.model_validate(policy.drift(services.db, caller.tenant_id, name))


@admin_router.get("/policy", response_model=PolicyOut)
def admin_get(tenant: str, services: ServicesDep) -> PolicyOut:
    return PolicyOut.model_validate(policy.get_policy(services.db, tenants.find_tenant(services.db, tenant).id))


@admin_router.put("/policy", response_model=PolicyOut)
def admin_put(tenant: str, body: PolicyIn, services: ServicesDep) -> PolicyOut:
    owner = tenants.find_tenant(services.db, tenant)
    return _update(services, owner.id, owner.name, body, actor=audit.ADMIN)
