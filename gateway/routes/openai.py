"""OpenAI-compatible routes: models, chat completions, completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters import registry
from gateway import proxy
from gateway.deps import CallerDep, ServicesDep
from gateway.protocol import ModelCard, ModelList
from gateway.request_policy import ChatCompletionRequest, CompletionRequest
from gateway.services import Services
from gateway.tenants import Caller

router = APIRouter(prefix="/v1", tags=["openai"])


def _cards(services: Services, caller: Caller) -> list[ModelCard]:
    base = ModelCard(id=services.settings.base_model_name, created=services.started_at, owned_by="tailor")
    adapters = [
        ModelCard(id=a.name, created=int(a.created_at.timestamp()), owned_by=caller.tenant_name)
        for a in registry.list_adapters(services.db, caller.tenant_id)
        if a.active_version is not None
    ]
    return [base, *adapters]


@router.get("/models", response_model=ModelList, summary="List the base model and your adapters")
def list_models(services: ServicesDep, caller: CallerDep) -> ModelList:
    return ModelList(data=_cards(services, caller))


@router.get("/models/{model}", response_model=ModelCard, summary="Retrieve one model")
def get_model(model: str, services: ServicesDep, caller: CallerDep) -> ModelCard:
    for card in _cards(services, caller):
        if card.id == model:
            return card
    raise registry.model_not_found(model)


@router.post(
    "/chat/completions",
    summary="Create a chat completion (base model or one of your adapters)",
    response_class=Response,
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, services: ServicesDep, caller: CallerDep
) -> Response:
    return await proxy.complete(services, caller, "chat", body.model_dump(exclude_unset=True), request)


@router.post("/completions", summary="Create a text completion", response_class=Response)
async def completions(body: CompletionRequest, request: Request, services: ServicesDep, caller: CallerDep) -> Response:
    return await proxy.complete(services, caller, "completion", body.model_dump(exclude_unset=True), request)
