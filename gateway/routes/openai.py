"""OpenAI-compatible routes: chat completions, completions (models: gateway.routes.models)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import proxy
from gateway.deps import CallerDep, ServicesDep
from gateway.request_policy import ChatCompletionRequest, CompletionRequest

router = APIRouter(prefix="/v1", tags=["openai"])


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
