"""One batch request, answered on the path of a live request, as the batch's tenant.

The body is validated by the same request model as the live route's, then handed to
`proxy.complete` (chat and text completions) or the Responses API's `create`: model
routing and adapters, rate limits and quotas, the interaction log, token metering and
redaction all apply as they do to a live call. It goes as a batch's request
(`proxy.BatchContext`): at the batch priority on the engine, logged with the batch's id (so
usage reports it apart, at the batch price). What would be a live request's HTTP answer
becomes the line's `response`. A streamed request is refused per line (a batch has nobody
to stream to), as OpenAI does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message

from core.errors import TailorError, bad_request, invalid_body
from gateway import proxy
from gateway.batches.input_file import ENDPOINTS, RequestLine
from gateway.request_policy import ChatCompletionRequest, CompletionRequest
from gateway.responses import create as responses
from gateway.responses.protocol import CreateResponseRequest
from gateway.services import Services
from gateway.tenants import Caller

# Refusals that say "not now" rather than "not this": the line is tried again later.
RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    request_id: str | None  # the interaction id; None when the gateway refused the line before logging it
    retry_after_s: float | None = None  # what a 429 said to wait

    @property
    def retry(self) -> bool:
        return self.status in RETRY_STATUSES


async def answer(services: Services, caller: Caller, line: RequestLine, batch: proxy.BatchContext) -> Answer:
    """The answer a live request with this line's body would have got."""
    try:
        response = await _send(services, caller, line, batch)
    except TailorError as exc:
        return Answer(exc.status, exc.body(), None, _seconds((exc.headers or {}).get("Retry-After")))
    if isinstance(response, StreamingResponse):  # never: streams are refused above
        raise AssertionError("a batch request was answered as a stream")
    return Answer(
        response.status_code,
        orjson.loads(response.body),
        response.headers.get(proxy.INTERACTION_HEADER),
        _seconds(response.headers.get("retry-after")),
    )


async def _send(services: Services, caller: Caller, line: RequestLine, batch: proxy.BatchContext) -> Response:
    if line.body.get("stream"):
        raise bad_request(
            "Streaming is not available in a batch: leave stream out (or false).",
            code="unsupported_parameter",
            param="stream",
        )
    request = _batch_request(line.url)
    kind = ENDPOINTS[line.url]
    if kind == "responses":
        return await responses.create(services, caller, _validated(CreateResponseRequest, line.body), request, batch)
    model = ChatCompletionRequest if kind == "chat" else CompletionRequest
    body = _validated(model, line.body).model_dump(exclude_unset=True)
    return await proxy.complete(services, caller, kind, body, request, batch=batch)


def _validated(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc.errors()) from None


def _batch_request(path: str) -> Request:
    """The request object the live path reads (headers for tracing, `receive` to notice a
    client going away): no headers, and a client that never goes away."""

    async def receive() -> Message:
        await asyncio.get_running_loop().create_future()  # waits until the line is cancelled
        raise AssertionError("unreachable")

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
    return Request(scope, receive)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
