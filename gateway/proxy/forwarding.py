"""A completion request from arrival to answer: check it, resolve the tenant's model, lease
an engine with the adapter resident, send the request, and hand the engine's answer on
(whole, or as a stream). Every request ends as one interaction record."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import orjson
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import Response

from core.errors import TailorError
from gateway import limits, normalize, request_policy, stored_completions, tool_choice
from gateway.proxy.call import BatchContext, Call, CompletionCall, EngineBody, Route, open_call
from gateway.proxy.disconnect import ClientDisconnected
from gateway.proxy.engine_call import acquire, send
from gateway.proxy.errors import CLIENT_CLOSED, internal_error, json_response
from gateway.proxy.finishing import finish_body
from gateway.proxy.streaming import StreamedAnswer
from gateway.request_policy import Kind
from gateway.services import Services
from gateway.tenants import Caller

log = logging.getLogger("tailor.gateway")


async def complete(
    services: Services,
    caller: Caller,
    kind: Kind,
    body: dict[str, Any],
    request: Request,
    call: Call | None = None,
    batch: BatchContext | None = None,
) -> Response:
    c = open_call(services, caller, kind, body, request, call, batch)
    try:
        fields = _plan(c)
        if caller.limits is not None and caller.limits.rate_limited:
            with c.spans.step("rate limits"):
                await admit(services, caller)
        with c.spans.step("resolve model"):
            resolved = await services.resolve(caller.tenant_id, c.record.model)
        c.model_known = True
        c.record.adapter_version_id = resolved.version_id
        # The base pool with the adapter, or a full model's own engine (which may be starting).
        c.upstream = await services.upstream(resolved)
        # Encoded before an engine is leased: a body that cannot be sent holds nothing.
        c.payload = _engine_body(c, fields)
        c.lease = await acquire(c)
    except TailorError as exc:
        return c.refuse(exc, exc.headers)
    except BaseException as exc:
        # Not a refusal (a bug, a failing database, cancellation): no log row, as before,
        # but the in-flight gauge and the span are closed.
        c.finish(CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500, repr(exc), log=False)
        raise

    c.record.engine = c.lease.url
    try:
        return await _answer(c)
    except asyncio.CancelledError:
        c.finish(CLIENT_CLOSED, "client disconnected")
        raise
    except Exception as exc:
        log.exception("request %s failed after an engine was leased", c.record.id)
        err = internal_error()
        c.finish(err.status, f"internal error: {type(exc).__name__}")
        return json_response(err.body(), err.status, c.record.id)
    finally:
        # The one place a lease goes back, whatever happened; a stream takes it over and
        # gives it back when it closes.
        if not c.streaming:
            c.release()


async def admit(services: Services, caller: Caller) -> None:
    """Count one request of the caller against its rate limits (a 429 TailorError when over)."""
    try:
        await asyncio.to_thread(limits.admit, services.db, caller.tenant_id, caller.limits)  # type: ignore[arg-type]
    except DBAPIError:
        # Limits protect capacity; an outage of the counters must not become an outage of
        # the service. Let the request through, and say so in the metrics and the log.
        services.telemetry.db_unavailable("limits", served_stale=None)
        log.warning("rate limits not checked for tenant %s: database unavailable", caller.tenant_id)


def _plan(call: CompletionCall) -> dict[str, Any]:
    """The fields sent to the engine, once the request passed the operator's policy; a forced
    tool call reshapes the call's route."""
    settings = call.services.settings
    body = call.body
    fields = request_policy.engine_fields(call.kind, body, frozenset(settings.engine_allowed_extra_fields))
    request_policy.check_output_cap(body, settings.max_output_tokens)
    call.record.stored, call.record.stored_metadata = stored_completions.storage(call.kind, body)
    fields, forced = tool_choice.plan(fields, settings.engine_tool_call_parser)
    if forced is not None:
        call.route = _forcing(call.route, forced)
    return fields


def _engine_body(call: CompletionCall, fields: dict[str, Any]) -> EngineBody:
    cache_salt = call.services.cache_salts.for_tenant(call.caller.tenant_id, fields.get("cache_salt"))
    engine_model = call.upstream.engine_model

    def encoded(priority: int | None = None) -> bytes:
        return request_policy.engine_payload(
            fields, model=engine_model, stream=call.record.stream, cache_salt=cache_salt, priority=priority
        )

    # Interactive requests never carry a `priority`: the engine's default is the highest.
    batch = call.batch
    return EngineBody(encoded(), encoded(batch.priority) if batch else None)


def _forcing(route: Route, forced: tool_choice.ForcedCall) -> Route:
    """This request's route, with the answer reshaped into the call Tailor forced."""
    stream = forced.stream()
    return dataclasses.replace(
        route,
        body=lambda raw, **names: forced.answer(route.body(raw, **names)),
        chunk=lambda raw, **names: stream.chunk(route.chunk(raw, **names)),
    )


async def _answer(call: CompletionCall) -> Response:
    """Send the request to the leased engine and answer the client. Never releases the lease."""
    engine_model, public_model = call.upstream.engine_model, call.record.model
    call.engine_names = {engine_model: public_model} if engine_model != public_model else {}
    try:
        resp = await send(call)
    except TailorError as exc:
        return call.refuse(exc)
    except ClientDisconnected:
        call.finish(CLIENT_CLOSED, "client disconnected")
        return Response(status_code=CLIENT_CLOSED)

    if resp.status_code >= 400:
        try:
            raw = await resp.aread()
        finally:
            await resp.aclose()
        error = normalize.error(_parse(raw), resp.status_code, replace=call.engine_names)
        call.finish(resp.status_code, error["error"]["message"])
        return json_response(error, resp.status_code, call.record.id)

    if not call.record.stream:
        return await finish_body(call, resp)
    return StreamedAnswer(call, resp)


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
