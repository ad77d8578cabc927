"""OpenAI's grader API (`/v1/fine_tuning/alpha/graders/run` and `/validate`); the logic is
trainer.graders, the model calls gateway.graders."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from core.errors import TailorError
from gateway import graders, proxy
from gateway.deps import CallerDep, ServicesDep
from trainer.graders import Sample, grade, parse_grader, public

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders", tags=["fine-tuning"])


class RunGraderRequest(BaseModel):
    grader: Any = Field(description="string_check, text_similarity, python, score_model or multi.")
    model_sample: str = Field(description="The answer to grade: the `sample` namespace (output_json if it is JSON).")
    item: dict[str, Any] = Field(default_factory=dict, description="The dataset item: the `item` namespace.")


class ValidateGraderRequest(BaseModel):
    grader: Any


@router.post(
    "/run",
    summary="Run a grader on one model sample and dataset item: the reward and what went wrong, as OpenAI reports it",
)
async def run_grader(
    body: RunGraderRequest, request: Request, services: ServicesDep, caller: CallerDep
) -> dict[str, Any]:
    grader = parse_grader(body.grader, await services.graders.capabilities())
    context = graders.context(services, caller, request)
    try:
        # A client that went away stops its grade: model calls and Python runs are not free.
        result = await proxy.until_disconnect(
            request, grade(grader, Sample.from_text(body.model_sample), body.item, context)
        )
    except proxy.ClientDisconnected:
        raise TailorError(proxy.CLIENT_CLOSED, "The client disconnected.", code="client_disconnected") from None
    return result.as_run_response()


@router.post("/validate", summary="Check a grader without running it: the grader back, or a 400 naming the field")
async def validate_grader(body: ValidateGraderRequest, services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    grader = parse_grader(body.grader, await services.graders.capabilities())
    return {"grader": public(grader)}
