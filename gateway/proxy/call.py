"""One completion request on its way through the proxy, and what shapes it.

`CompletionCall` carries a request's state from step to step (who asked, what, where it is
served, its engine lease, its span and its log record); its `finish` ends the record exactly
once: logged, metered and counted in the metrics and traces.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from adapters.engines import Engine, Lease
from core.errors import TailorError
from core.ids import new_id
from gateway import normalize
from gateway.interaction_log import InteractionRecord
from gateway.proxy.errors import json_response
from gateway.proxy.presenters import Passthrough, Presenter
from gateway.request_policy import Kind
from gateway.services import Services, Upstream
from gateway.tenants import Caller


@dataclass(frozen=True)
class Route:
    path: str
    endpoint: str
    id_prefix: str
    body: Callable[..., dict[str, Any]]
    chunk: Callable[..., dict[str, Any]]


ROUTES: dict[Kind, Route] = {
    "chat": Route(
        "/v1/chat/completions", "chat.completions", "chatcmpl", normalize.chat_completion, normalize.chat_chunk
    ),
    "completion": Route("/v1/completions", "completions", "cmpl", normalize.completion, normalize.completion_chunk),
}


@dataclass(frozen=True)
class BatchContext:
    """A request that is one line of a batch (gateway.batches): logged and metered as the
    batch's, sent to the engine with `priority` (scheduled after interactive requests), and
    counted apart on the engines, so the batch runner can yield to interactive load."""

    batch_id: str
    priority: int


@dataclass(frozen=True)
class EngineBody:
    """A request's engine body, encoded; a batch request's also in the form with its `priority`."""

    plain: bytes
    prioritised: bytes | None = None

    def for_engine(self, engine: Engine) -> bytes:
        if self.prioritised is not None and engine.takes_priority:
            return self.prioritised
        return self.plain


@dataclass(frozen=True)
class Call:
    """A request another API sends down the chat path (gateway.responses): the id and
    endpoint name it is logged under, what of it is logged, and how it is answered."""

    id: str
    endpoint: str
    request: dict[str, Any]
    presenter: Presenter


@dataclass(slots=True, eq=False)
class CompletionCall:
    """A completion request's state, from arrival to its one log record."""

    services: Services
    caller: Caller
    kind: Kind
    route: Route  # reshaped when Tailor forces a tool call
    body: dict[str, Any]  # the client's request, as validated
    request: Request  # Starlette's: watched for the client going away
    record: InteractionRecord
    presenter: Presenter
    spans: Any  # the request's spans (gateway.tracing), or the do-nothing stand-in
    started: float  # time.perf_counter() at arrival
    batch: BatchContext | None = None
    model_known: bool = False  # metrics label a model by name only once it resolved
    finished: bool = False
    # Known once the model resolved and an engine is leased.
    upstream: Upstream = field(init=False, repr=False)
    payload: EngineBody = field(init=False, repr=False)
    lease: Lease = field(init=False, repr=False)
    # The engine's name for the model (an adapter id, a full model's digest) is internal: what
    # the engine says is passed on with the public name instead.
    engine_names: dict[str, str] = field(init=False, repr=False)
    streaming: bool = False  # a stream owns the lease now and gives it back when it closes
    released: bool = False

    def finish(self, status: int, error: str | None = None, *, log: bool = True) -> None:
        if self.finished:  # a failure after the answer was recorded must not count the request twice
            return
        self.finished = True
        record = self.record
        record.status_code = status
        record.error = error
        record.latency_ms = (time.perf_counter() - self.started) * 1000
        services = self.services
        if log:
            services.interactions.record(record)
            limits = self.caller.limits
            if limits is not None and limits.counts_tokens:
                services.meter.add(record.tenant_id, (record.prompt_tokens or 0) + (record.completion_tokens or 0))
        services.telemetry.request_finished(self.spans, record, self.model_known)

    def release(self) -> None:
        """Give the engine lease back, exactly once."""
        if not self.released:
            self.released = True
            self.upstream.pool.release(self.lease)

    def refuse(self, exc: TailorError, headers: dict[str, str] | None = None) -> Response:
        """End the request with Tailor's error, and answer it."""
        self.finish(exc.status, exc.message)
        return json_response(exc.body(), exc.status, self.record.id, headers)


def open_call(
    services: Services,
    caller: Caller,
    kind: Kind,
    body: dict[str, Any],
    request: Request,
    call: Call | None,
    batch: BatchContext | None,
) -> CompletionCall:
    """A request's call object, counted in flight and with its span open."""
    route = ROUTES[kind]
    interaction_id = call.id if call else new_id(route.id_prefix)
    started = time.perf_counter()
    if call is None:
        # What was asked, without the (already validated) model name repeated.
        logged = {k: v for k, v in body.items() if k != "model"}
        # The usage chunk of a stream goes to the client only if it asked (`stream_options`).
        presenter: Presenter = Passthrough(bool((body.get("stream_options") or {}).get("include_usage")))
    else:
        logged, presenter = call.request, call.presenter
    record = InteractionRecord(
        id=interaction_id,
        tenant_id=caller.tenant_id,
        api_key_id=caller.key_id,
        endpoint=call.endpoint if call else route.endpoint,
        model=body["model"],
        stream=bool(body.get("stream")),
        request=logged,
        batch_id=batch.batch_id if batch else None,
    )
    spans = services.telemetry.request_started(kind, record, body, request)
    return CompletionCall(services, caller, kind, route, body, request, record, presenter, spans, started, batch)


def text_of(choice: dict[str, Any], kind: Kind) -> str | None:
    """The generated text of a choice (or a stream's delta), as it is logged."""
    if kind == "completion":
        return choice.get("text")
    message = choice.get("message") or choice.get("delta") or {}
    content = message.get("content")
    return content if isinstance(content, str) else None
