"""The FastAPI application: routers, error mapping, body limits, proxy headers, lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from core.config import Settings
from core.errors import TailorError, invalid_body
from gateway import privacy
from gateway.auth_guard import FailedAuthLimiter
from gateway.batches.runner import BatchRunner
from gateway.body_limit import BodyLimit
from gateway.console import mount_console
from gateway.routes import (
    adapters,
    admin,
    audit,
    batches,
    engine_files,
    feedback,
    files,
    fine_tuning,
    graders,
    health,
    limits,
    metrics,
    models,
    openai,
    policy,
    responses,
    stored_completions,
    usage,
)
from gateway.routes import privacy as privacy_routes
from gateway.services import Services


def error_response(exc: TailorError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _tailor_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TailorError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(invalid_body(exc.errors()))


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = {
        404: "Unknown request URL. Please check the URL and method.",
        405: "Method not allowed for this URL.",
    }.get(exc.status_code, str(exc.detail))
    code = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
    return error_response(TailorError(exc.status_code, message, code=code))


async def _internal_error(_request: Request, _exc: Exception) -> JSONResponse:
    # Starlette's ServerErrorMiddleware calls this for any unhandled exception, then re-raises it
    # for the server to log; clients get OpenAI's error body instead of a text/plain page.
    return error_response(
        TailorError(500, "The server had an error while processing your request.", code="internal_error")
    )


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    wait_for_engines: bool = True,
    retention: bool = True,
) -> FastAPI:
    """The gateway app; `retention=False` where another process of the host applies retention
    (the parent of `tailor serve --workers`)."""
    settings = settings or (services.settings if services else Settings())
    svc = services or Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await svc.start(wait_for_engines=wait_for_engines)
        loops = []
        if retention:
            loops.append(
                asyncio.create_task(
                    privacy.retention_loop(svc.db, interval_s=settings.retention_interval_s), name="retention"
                )
            )
        runner = BatchRunner(svc) if settings.run_batches else None
        if runner is not None:
            runner.start()
        app.state.batch_runner = runner
        try:
            yield
        finally:
            if runner is not None:
                await runner.stop()  # before the services: its last requests are logged
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await svc.stop()

    app = FastAPI(
        title="Tailor",
        version="0.1.0",
        summary="OpenAI-compatible gateway: one base model, per-tenant LoRA adapters.",
        lifespan=lifespan,
    )
    app.state.services = svc
    app.add_exception_handler(TailorError, _tailor_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    routers = (
        models.router,
        openai.router,
        stored_completions.router,
        responses.router,
        adapters.router,
        feedback.router,
        files.router,
        batches.router,
        fine_tuning.router,
        graders.router,
        policy.router,
        usage.router,
        adapters.admin_router,
        fine_tuning.admin_router,
        policy.admin_router,
        usage.admin_router,
        limits.router,
        limits.admin_router,
        audit.router,
        audit.admin_router,
        privacy_routes.router,
        admin.router,
        health.router,
        metrics.router,
        engine_files.router,
    )
    for router in routers:
        app.include_router(router)
    mount_console(app)
    app.state.auth_failures = FailedAuthLimiter(settings.auth_failures_per_minute)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, max_upload_bytes=settings.max_upload_bytes)
    if settings.trusted_proxies:
        # Outermost, so the body limit, the failed-authentication count and the console's
        # Secure cookie all see the client's address and scheme, not the proxy's.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app
