"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import JSONResponse

from gateway.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health", summary="The gateway process is up")
def health() -> dict[str, str]:
    return {"status": "ok"}


class InteractionLogOut(BaseModel):
    written: int
    dropped: int
    queued: int


class ReadyOut(BaseModel):
    status: Literal["ready", "unavailable"]
    healthy_engines: int
    engines: int
    interaction_log: InteractionLogOut


@router.get(
    "/ready",
    summary="At least one engine can take requests",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "No engine can take requests (status `unavailable`)."}},
)
def ready(services: ServicesDep) -> JSONResponse:
    healthy = sum(e.healthy for e in services.pool.engines)
    status = 200 if healthy else 503
    return JSONResponse(
        {
            "status": "ready" if healthy else "unavailable",
            "healthy_engines": healthy,
            "engines": len(services.pool.engines),
            "interaction_log": {
                "written": services.interactions.written,
                "dropped": services.interactions.dropped,
                "queued": services.interactions.queue.qsize(),
            },
        },
        status_code=status,
    )
