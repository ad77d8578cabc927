"""Graders run by the gateway (`/v1/fine_tuning/alpha/graders/*`): trainer.graders with the
gateway's way of calling models.

A score_model or label_model grader names a model: one the operator configured
(TAILOR_GRADER_MODEL_ENDPOINTS, reached through the outbound policy) or else one of the
calling tenant's own (the base model, an adapter, a pinned version, a checkpoint). The
tenant's models answer on the live chat path (gateway.proxy): model resolution, rate limits
and quotas, the interaction log (endpoint `fine_tuning.graders`) and token metering apply as
to any chat completion of the tenant. A call to an operator's endpoint counts against the
tenant's rate limits and token quotas the same way (OperatorModels), and is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from core.errors import TailorError
from core.ids import new_id
from gateway import proxy
from gateway.services import Services
from gateway.tenants import Caller
from trainer.graders import ExternalModels, GradingContext, ModelReply, RoutedModels
from trainer.graders.models import reply_of
from trainer.graders.runtime import GraderRuntime

ENDPOINT = "fine_tuning.graders"  # interaction log and metrics
log = logging.getLogger("tailor.graders")


@dataclass
class TenantModels:
    """The calling tenant's models, answered on the chat path as the tenant's own requests."""

    services: Services
    caller: Caller
    request: Request

    async def __call__(self, model: str, body: dict[str, Any]) -> ModelReply:
        chat = {**body, "model": model, "stream": False}
        call = proxy.Call(
            id=new_id("chatcmpl"),
            endpoint=ENDPOINT,
            request={k: v for k, v in chat.items() if k != "model"},
            presenter=proxy.Passthrough(),
        )
        response = await proxy.complete(self.services, self.caller, "chat", chat, self.request, call)
        answer = orjson.loads(bytes(response.body)) if response.body else {}
        if response.status_code != 200:
            error = answer.get("error") or {}
            param = "grader.model" if response.status_code == 404 else None
            raise TailorError(
                response.status_code,
                f"The grader model {model!r}: {error.get('message') or 'the request failed'}",
                code=error.get("code") or "model_grader_error",
                param=param,
            )
        return reply_of(model, answer)


@dataclass
class OperatorModels:
    """The operator's endpoints (TAILOR_GRADER_MODEL_ENDPOINTS) as the calling tenant's: each
    call is admitted by the tenant's rate limits and its tokens count against its quotas."""

    services: Services
    caller: Caller
    external: ExternalModels

    def handles(self, name: str) -> bool:
        return self.external.handles(name)

    async def __call__(self, model: str, body: dict[str, Any]) -> ModelReply:
        limits = self.caller.limits
        if limits is not None and limits.rate_limited:
            await proxy.admit(self.services, self.caller)
        reply = await self.external(model, body)
        if limits is not None and limits.counts_tokens:
            self.services.meter.add(self.caller.tenant_id, reply.usage.total_tokens)
        log.info(
            "grader model %r (operator endpoint) for tenant %s: %d tokens",
            model,
            self.caller.tenant_id,
            reply.usage.total_tokens,
        )
        return reply


def context(services: Services, caller: Caller, request: Request) -> GradingContext:
    runtime: GraderRuntime = services.graders
    external = ExternalModels.from_settings(services.settings, caller.tenant_id)
    models = RoutedModels(TenantModels(services, caller, request), OperatorModels(services, caller, external))
    return GradingContext(
        models=models,
        sandbox=runtime.sandbox,
        python_slots=runtime.python_slots_for(caller.tenant_id),
        timeout_s=runtime.timeout_s,
    )
