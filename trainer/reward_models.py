"""How a reinforcement job's model graders (score_model, label_model) reach a model, in the
worker's evaluation and in its training process (the reward inside TRL's GRPO loop).

A grader's model is, as in the gateway's grader routes (gateway.graders), either a name the
operator configured (TAILOR_GRADER_MODEL_ENDPOINTS: trainer.graders.ExternalModels, through
the outbound policy, with the routes' timeouts and limits) or one of the job's tenant's own
models: the base model or an adapter version, which answer on the worker's engine
(trainer.compute.engine, the one the evaluation and a local distillation teacher use), the
adapter loaded under an internal name for the job. The worker resolves those names once
(trainer.worker.grading) and hands the training process `GraderModels`: plain values that
travel in its recipe, the engine's key in its environment (`ENGINE_AUTH_ENV`), never in a file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.config import Settings
from core.errors import TailorError
from trainer.compute.engine import EngineClient
from trainer.graders import ExternalModels, GradingContext, ModelReply, RoutedModels
from trainer.graders.models import reply_of
from trainer.graders.runtime import GraderRuntime

# The training process's environment variable that carries the engine's Authorization header.
ENGINE_AUTH_ENV = "TAILOR_GRADER_ENGINE_AUTHORIZATION"


@dataclass(frozen=True)
class GraderModels:
    """The job's tenant, and the tenant's models its grader names, each as the engine at
    `engine_url` serves it (`served`: the tenant's name -> the engine's name)."""

    tenant_id: str
    engine_url: str | None = None
    served: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "engine_url": self.engine_url, "served": dict(self.served)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GraderModels:
        return cls(str(data["tenant_id"]), data.get("engine_url"), dict(data.get("served") or {}))

    def engine(self, environ: Mapping[str, str]) -> EngineClient | None:
        """The engine client, in the training process (its key from `environ`)."""
        if self.engine_url is None:
            return None
        auth = environ.get(ENGINE_AUTH_ENV)
        return EngineClient(self.engine_url, "", {"Authorization": auth} if auth else {})


def engine_environment(client: EngineClient | None) -> dict[str, str]:
    """What the training process's environment adds for it to reach `client`."""
    auth = client.headers.get("Authorization") if client is not None else None
    return {ENGINE_AUTH_ENV: auth} if auth else {}


@dataclass
class EngineModels:
    """The tenant's models a grader names, answered on the worker's engine; any other name is
    not the tenant's (404, the grader cannot be used: the job fails)."""

    client: EngineClient | None
    served: Mapping[str, str]

    async def __call__(self, model: str, body: dict[str, Any]) -> ModelReply:
        name = self.served.get(model)
        if name is None or self.client is None:
            raise TailorError(
                404,
                f"The grader model {model!r} is neither one of your models nor a grader model this server offers.",
                code="model_not_found",
                param="grader.model",
            )
        loop = asyncio.get_running_loop()
        return reply_of(model, await loop.run_in_executor(None, self.client.chat, name, body))


def grading_context(settings: Settings, models: GraderModels, engine: EngineClient | None) -> GradingContext:
    """What the job's grader may use: the operator's endpoints open to the tenant, the tenant's
    models on `engine`, the sandbox where Python graders are enabled, the routes' deadline."""
    runtime = GraderRuntime.from_settings(settings)
    external = ExternalModels.from_settings(settings, models.tenant_id)
    return GradingContext(
        models=RoutedModels(EngineModels(engine, models.served), external),
        sandbox=runtime.sandbox,
        python_slots=runtime.python_slots,
        timeout_s=runtime.timeout_s,
    )
