"""`POST /v1/responses`: a Responses request answered on the chat path (see the package docstring)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import Response

from core.errors import TailorError, bad_request
from core.ids import new_id, utcnow
from gateway import proxy, request_policy
from gateway.responses import store
from gateway.responses.items import chat_messages, input_items
from gateway.responses.objects import Echo
from gateway.responses.presenter import ResponsePresenter, Saver
from gateway.responses.protocol import CreateResponseRequest, engine_extras, refuse_unsupported
from gateway.services import Services
from gateway.tenants import Caller

JSON = dict[str, Any]
ENDPOINT = "responses"  # interaction log and metrics
T = TypeVar("T")


async def create(
    services: Services,
    caller: Caller,
    req: CreateResponseRequest,
    request: Request,
    batch: proxy.BatchContext | None = None,
) -> Response:
    """A Responses request; `batch` when it is a line of a batch (gateway.batches)."""
    settings = services.settings
    refuse_unsupported(req)
    extras = engine_extras(req, frozenset(settings.engine_allowed_extra_fields))
    request_policy.check_output_cap(
        {"max_output_tokens": req.max_output_tokens}, settings.max_output_tokens, params=("max_output_tokens",)
    )
    items = input_items(req.input)
    history = await _history(services, caller, req.previous_response_id)
    chat = chat_body(req, chat_messages(req.instructions, [*history, *items]), extras)

    rid = new_id("resp", "_")
    created = utcnow()
    saver = _saver(services, caller, rid, created, req, items) if req.stored else None
    presenter = ResponsePresenter(rid, int(created.timestamp()), Echo.of(req), saver, time.time)
    logged = {k: v for k, v in chat.items() if k != "model"}  # chat form: what the engine saw
    call = proxy.Call(id=rid, endpoint=ENDPOINT, request=logged, presenter=presenter)
    return await proxy.complete(services, caller, "chat", chat, request, call, batch)


async def _history(services: Services, caller: Caller, previous_response_id: str | None) -> list[JSON]:
    if previous_response_id is None:
        return []
    turns = await _stored(services, store.conversation, services.db, caller.tenant_id, previous_response_id)
    if not turns:
        raise bad_request(
            f"Previous response with id '{previous_response_id}' not found.",
            code="previous_response_not_found",
            param="previous_response_id",
        )
    return store.context_items(turns)


def chat_body(req: CreateResponseRequest, messages: list[JSON], extras: JSON) -> JSON:
    """The chat completion request a Responses request is answered with."""
    body: JSON = {**extras, "model": req.model, "messages": messages, "stream": bool(req.stream)}
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = fmt.model_dump(exclude_none=True, by_alias=True, exclude={"type"})
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["reasoning_effort"] = req.reasoning.effort
    return body


def _saver(
    services: Services, caller: Caller, rid: str, created: datetime, req: CreateResponseRequest, items: list[JSON]
) -> Saver:
    async def save(body: JSON) -> None:
        turn = store.Turn(
            id=rid,
            model=req.model,
            created_at=created,
            previous_response_id=req.previous_response_id,
            input_items=items,
            body=body,
        )
        await _stored(
            services, store.save, services.db, caller.tenant_id, turn, redact_all=services.settings.redact_pii
        )

    return save


async def _stored(services: Services, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A stored-response read or write, in a thread. Without the database a conversation can be
    neither continued nor kept: a retryable 503 (`store: false` answers without it)."""
    try:
        return await asyncio.to_thread(action, *args, **kwargs)
    except DBAPIError as exc:
        services.telemetry.db_unavailable("responses", served_stale=False)
        raise TailorError(
            503, "The database is unavailable; please retry shortly.", code="database_unavailable"
        ) from exc
