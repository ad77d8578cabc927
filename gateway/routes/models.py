"""OpenAI's models routes: what a tenant can call, one of them, and deleting a fine-tuned one.

The names are `adapters.model_names`' (base model, aliases, pinned `name@vN` versions);
deleting is `adapters.version_deletion`'s (audited there, like every adapter change),
forgotten by this replica's caches at once, and unloaded from the engines.
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from adapters import model_names, version_deletion
from adapters.model_names import ModelName
from gateway import audit
from gateway.deps import CallerDep, ServicesDep
from gateway.protocol.models import ModelCard, ModelDeleted, ModelList
from gateway.protocol.wire import unix_seconds
from gateway.services import Services
from gateway.tenants import Caller

router = APIRouter(prefix="/v1", tags=["openai"])

_AFTER = Query(None, description="A model id from an earlier page: the page starts after it.")
_LIMIT = Query(None, ge=1, le=model_names.MAX_LIMIT, description="Models per page (default: all of them).")


def _card(name: ModelName, services: Services, caller: Caller) -> ModelCard:
    if name.created is None:  # a base model: as old as this process
        return ModelCard(id=name.id, created=services.started_at, owned_by="tailor")
    return ModelCard(id=name.id, created=unix_seconds(name.created), owned_by=caller.tenant_name)


@router.get(
    "/models",
    response_model=ModelList,
    response_model_exclude_none=True,
    summary="List the models you can call: the base models, your adapters and each version `name@vN`",
)
def list_models(
    services: ServicesDep, caller: CallerDep, after: str | None = _AFTER, limit: int | None = _LIMIT
) -> ModelList:
    bases = services.base_names
    names = model_names.list_names(services.db, caller.tenant_id, bases=bases)
    if after is None and limit is None:
        return ModelList(data=[_card(n, services, caller) for n in names])
    page = model_names.page(names, after=after, limit=limit, bases=bases)
    data = [_card(n, services, caller) for n in page.names]
    return ModelList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


@router.get("/models/{model}", response_model=ModelCard, summary="Retrieve one model you can call")
def get_model(model: str, services: ServicesDep, caller: CallerDep) -> ModelCard:
    found = model_names.find_name(services.db, caller.tenant_id, model, bases=services.base_names)
    return _card(found, services, caller)


@router.delete(
    "/models/{model}",
    response_model=ModelDeleted,
    summary="Delete a fine-tuned model `name@vN` (not while it is active or a canary)",
)
async def delete_model(model: str, services: ServicesDep, caller: CallerDep) -> ModelDeleted:
    deleted = await run_in_threadpool(
        lambda: version_deletion.delete_version(
            services.db,
            services.store,
            caller.tenant_id,
            model,
            bases=services.base_names,
            actor=audit.actor_for_key(caller.key_id),
        )
    )
    services.changed()  # no longer resolves in this replica; others within the cache's TTL
    await services.unload([deleted.version.id])
    return ModelDeleted(id=deleted.model, deleted=True)
