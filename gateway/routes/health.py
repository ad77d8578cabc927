"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from adapters.engines import Engine
from gateway.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health", summary="The gateway process is up")
def health() -> dict[str, str]:
    return {"status": "ok"}


class InteractionLogOut(BaseModel):
    written: int
    dropped: int
    queued: int


class EngineStatusOut(BaseModel):
    url: str
    healthy: bool
    problem: str | None = Field(None, description="Why this engine takes no traffic (no paths, no secrets).")


class ReadyOut(BaseModel):
    status: Literal["ready", "unavailable"]
    healthy_engines: int
    engines: int
    engine_status: list[EngineStatusOut]
    interaction_log: InteractionLogOut


def _engine_status(engine: Engine) -> dict[str, object]:
    # /ready is unauthenticated: an engine URL's user info (a proxy's credentials) is never shown.
    parts = urlsplit(engine.url)
    shown = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    problem = None if engine.healthy or engine.problem is None else engine.problem.replace(engine.url, shown)
    return EngineStatusOut(url=shown, healthy=engine.healthy, problem=problem).model_dump()


@router.get(
    "/ready",
    summary="At least one engine can take requests",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "No engine can take requests (status `unavailable`)."}},
)
def ready(services: ServicesDep) -> JSONResponse:
    healthy = sum(e.healthy for e in services.engines)
    status = 200 if healthy else 503
    return JSONResponse(
        {
            "status": "ready" if healthy else "unavailable",
            "healthy_engines": healthy,
            "engines": len(services.engines),
            "engine_status": [_engine_status(e) for e in services.engines],
            "interaction_log": {
                "written": services.interactions.written,
                "dropped": services.interactions.dropped,
                "queued": services.interactions.queue.qsize(),
            },
        },
        status_code=status,
    )
