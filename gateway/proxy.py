"""Forwarding OpenAI completions to an engine and normalising what comes back.

The serving hot path: resolve the tenant's model, lease an engine with the adapter
resident, send the request, and turn the engine's answer into OpenAI's schema — chunk by
chunk for streams, never buffering them. Every request ends as one interaction record.
How the normalised answer is sent is a `Presenter`: as it is for chat and text completions,
as Responses objects and events for the Responses API (gateway.responses), which answers
its requests on this same path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from adapters.engines import Engine, EnginePool, Lease, LoraRef
from core.errors import TailorError
from core.ids import new_id
from gateway import limits, normalize, request_policy, stored_completions, tool_choice
from gateway.interaction_log import InteractionRecord
from gateway.request_policy import Kind
from gateway.services import Services
from gateway.tenants import Caller

log = logging.getLogger("tailor.gateway")

INTERACTION_HEADER = "x-tailor-interaction-id"
# Status recorded when the client went away before the answer was complete (nginx's).
CLIENT_CLOSED = 499
_JSON_HEADERS = {"content-type": "application/json"}


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


class Presenter(Protocol):
    """How a normalised answer reaches the client.

    Chat and text completions go out as they are (`Passthrough`); the Responses API
    (gateway.responses) sends the same engine answer as its own objects and events. A stream
    calls `opening` once, `chunk` per normalised chunk, then `closing` at the engine's
    `[DONE]` or `failure` instead when it fails; what each returns is sent as it is.
    """

    async def body(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def opening(self) -> bytes: ...
    def chunk(self, chunk: dict[str, Any]) -> bytes: ...
    async def closing(self) -> bytes: ...
    def failure(self, error: dict[str, Any]) -> bytes: ...


def _sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


@dataclass
class Passthrough:
    """OpenAI's chat and completions objects, as normalised; server-sent `data:` events."""

    wants_usage: bool = False  # the client asked for the usage chunk (`stream_options`)

    async def body(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def opening(self) -> bytes:
        return b""

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        # Tailor always asks the engine for usage; the client gets that chunk only if it asked.
        if not chunk.get("choices") and chunk.get("usage") and not self.wants_usage:
            return b""
        return _sse(chunk)

    async def closing(self) -> bytes:
        return b"data: [DONE]\n\n"

    def failure(self, error: dict[str, Any]) -> bytes:
        return _sse(error)


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


def _json(data: Any, status: int, interaction_id: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data),
        status_code=status,
        media_type="application/json",
        headers={INTERACTION_HEADER: interaction_id, **(headers or {})},
    )


def _text_of(choice: dict[str, Any], kind: Kind) -> str | None:
    if kind == "completion":
        return choice.get("text")
    message = choice.get("message") or choice.get("delta") or {}
    content = message.get("content")
    return content if isinstance(content, str) else None


def _request_log(kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
    # What was asked, without the (already validated) model name repeated.
    return {k: v for k, v in body.items() if k != "model"}


async def complete(
    services: Services,
    caller: Caller,
    kind: Kind,
    body: dict[str, Any],
    request: Request,
    call: Call | None = None,
    batch: BatchContext | None = None,
) -> Response:
    route = ROUTES[kind]
    interaction_id = call.id if call else new_id(route.id_prefix)
    started = time.perf_counter()
    public_model = body["model"]
    stream = bool(body.get("stream"))
    record = InteractionRecord(
        id=interaction_id,
        tenant_id=caller.tenant_id,
        api_key_id=caller.key_id,
        endpoint=call.endpoint if call else route.endpoint,
        model=public_model,
        stream=stream,
        request=call.request if call else _request_log(kind, body),
        batch_id=batch.batch_id if batch else None,
    )
    presenter = call.presenter if call else Passthrough(_client_wants_usage(record))
    telemetry = services.telemetry
    spans = telemetry.request_started(kind, record, body, request)
    model_known = False  # metrics label a model by name only once it resolved
    finished = False

    def finish(status: int, error: str | None = None, *, log: bool = True) -> None:
        nonlocal finished
        if finished:  # a failure after the answer was recorded must not count the request twice
            return
        finished = True
        record.status_code = status
        record.error = error
        record.latency_ms = (time.perf_counter() - started) * 1000
        if log:
            services.interactions.record(record)
            if caller.limits is not None and caller.limits.counts_tokens:
                services.meter.add(caller.tenant_id, (record.prompt_tokens or 0) + (record.completion_tokens or 0))
        telemetry.request_finished(spans, record, model_known)

    try:
        settings = services.settings
        fields = request_policy.engine_fields(kind, body, frozenset(settings.engine_allowed_extra_fields))
        request_policy.check_output_cap(body, settings.max_output_tokens)
        record.stored, record.stored_metadata = stored_completions.storage(kind, body)
        fields, forced = tool_choice.plan(fields, settings.engine_tool_call_parser)
        if forced is not None:
            route = _forcing(route, forced)
        if caller.limits is not None and caller.limits.rate_limited:
            with spans.step("rate limits"):
                await admit(services, caller)
        with spans.step("resolve model"):
            resolved = await services.resolve(caller.tenant_id, public_model)
        model_known = True
        record.adapter_version_id = resolved.version_id
        # The base pool with the adapter, or a full model's own engine (which may be starting).
        upstream = await services.upstream(resolved)
        lora = upstream.lora
        # Encoded before an engine is leased: a body that cannot be sent holds nothing.
        payload = _engine_body(services, caller, fields, upstream.engine_model, stream, batch)
        lease = await _acquire(upstream.pool, lora, public_model, background=batch is not None)
    except TailorError as exc:
        finish(exc.status, exc.message)
        return _json(exc.body(), exc.status, interaction_id, exc.headers)
    except BaseException as exc:
        # Not a refusal (a bug, a failing database, cancellation): no log row, as before,
        # but the in-flight gauge and the span are closed.
        finish(CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500, repr(exc), log=False)
        raise

    record.engine = lease.url
    held = _HeldLease(upstream.pool, lease)
    try:
        return await _answer(
            services,
            held,
            lora,
            upstream.engine_model,
            route,
            kind,
            payload,
            record,
            finish,
            interaction_id,
            request,
            spans,
            started,
            presenter,
        )
    except asyncio.CancelledError:
        finish(CLIENT_CLOSED, "client disconnected")
        raise
    except Exception as exc:
        log.exception("request %s failed after an engine was leased", interaction_id)
        err = _internal_error()
        finish(err.status, f"internal error: {type(exc).__name__}")
        return _json(err.body(), err.status, interaction_id)
    finally:
        # The one place a lease goes back, whatever happened; a stream takes it over and
        # gives it back when it closes.
        if not held.streaming:
            held.release()


def _engine_body(
    services: Services,
    caller: Caller,
    fields: dict[str, Any],
    engine_model: str,
    stream: bool,
    batch: BatchContext | None,
) -> EngineBody:
    def encoded(priority: int | None = None) -> bytes:
        return request_policy.engine_payload(
            fields,
            model=engine_model,
            stream=stream,
            cache_salt=services.cache_salts.for_tenant(caller.tenant_id, fields.get("cache_salt")),
            priority=priority,
        )

    # Interactive requests never carry a `priority`: the engine's default is the highest.
    return EngineBody(encoded(), encoded(batch.priority) if batch else None)


def _forcing(route: Route, forced: tool_choice.ForcedCall) -> Route:
    """This request's route, with the answer reshaped into the call Tailor forced."""
    stream = forced.stream()
    return dataclasses.replace(
        route,
        body=lambda raw, **names: forced.answer(route.body(raw, **names)),
        chunk=lambda raw, **names: stream.chunk(route.chunk(raw, **names)),
    )


@dataclass
class _HeldLease:
    """A request's engine lease, given back exactly once."""

    pool: EnginePool
    lease: Lease
    streaming: bool = False  # a stream owns it now and releases it when it closes
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool.release(self.lease)


async def _answer(
    services: Services,
    held: _HeldLease,
    lora: LoraRef | None,
    engine_model: str,
    route: Route,
    kind: Kind,
    payload: EngineBody,
    record: InteractionRecord,
    finish: Callable[..., None],
    interaction_id: str,
    request: Request,
    spans: Any,
    started: float,
    presenter: Presenter,
) -> Response:
    """Send the request to the leased engine and answer the client. Never releases the lease."""
    lease = held.lease
    public_model = record.model
    # The engine's name for the model (an adapter id, a full model's digest) is internal.
    replace = {engine_model: public_model} if engine_model != public_model else {}
    try:
        resp = await _send(services, held.pool, lease, lora, route, payload, request, spans, public_model)
    except TailorError as exc:
        finish(exc.status, exc.message)
        return _json(exc.body(), exc.status, interaction_id)
    except ClientDisconnected:
        finish(CLIENT_CLOSED, "client disconnected")
        return Response(status_code=CLIENT_CLOSED)

    if resp.status_code >= 400:
        try:
            raw = await resp.aread()
        finally:
            await resp.aclose()
        error = normalize.error(_parse(raw), resp.status_code, replace=replace)
        finish(resp.status_code, error["error"]["message"])
        return _json(error, resp.status_code, interaction_id)

    if not record.stream:
        return await _finish_body(
            held.pool, lease, route, kind, resp, record, finish, interaction_id, request, presenter
        )

    stream_call = _StreamCall(services, held, resp, record, finish)
    held.streaming = True
    gen = stream_call.events(route, kind, public_model, interaction_id, presenter, replace, started)
    return _ClosingStreamingResponse(
        gen,
        on_exit=lambda: stream_call.close(CLIENT_CLOSED, "client disconnected"),
        media_type="text/event-stream",
        headers={INTERACTION_HEADER: interaction_id, "cache-control": "no-cache"},
    )


def _client_wants_usage(record: InteractionRecord) -> bool:
    return bool((record.request.get("stream_options") or {}).get("include_usage"))


async def _acquire(pool: EnginePool, lora: LoraRef | None, public_model: str, *, background: bool) -> Lease:
    try:
        return await pool.acquire(lora, background=background)
    except TailorError as exc:
        raise _load_failure(exc, lora, public_model) from exc


async def _reload(pool: EnginePool, lease: Lease, lora: LoraRef, public_model: str) -> None:
    try:
        await pool.ensure_loaded(lease.engine, lora)
    except TailorError as exc:
        raise _load_failure(exc, lora, public_model) from exc


def _load_failure(exc: TailorError, lora: LoraRef | None, public_model: str) -> TailorError:
    """An adapter that could not be made resident, in Tailor's words.

    The engine's and the store's own messages name internal adapter ids and file paths:
    they go to the server log only.
    """
    if lora is None or exc.code == "engine_unavailable":
        return exc  # already Tailor's words, naming nothing internal
    log.warning("model %r (adapter %s) could not be loaded: %s", public_model, lora.name, exc.message)
    if exc.status >= 500 and exc.code == "engine_error":
        # The engine failed (5xx) while loading: another try may well succeed.
        return TailorError(
            503,
            f"Model '{public_model}' could not be loaded on an engine; try again shortly.",
            code="model_load_failed",
        )
    # The engine refused the adapter, or its stored files are missing or damaged: retrying
    # will not help until an operator looks at it.
    return TailorError(
        500,
        f"Model '{public_model}' could not be loaded on an engine; retrying will not help until an operator "
        "has looked at it.",
        code="model_load_failed",
    )


async def admit(services: Services, caller: Caller) -> None:
    """Count one request of the caller against its rate limits (a 429 TailorError when over)."""
    try:
        await asyncio.to_thread(limits.admit, services.db, caller.tenant_id, caller.limits)  # type: ignore[arg-type]
    except DBAPIError:
        # Limits protect capacity; an outage of the counters must not become an outage of
        # the service. Let the request through, and say so in the metrics and the log.
        services.telemetry.db_unavailable("limits", served_stale=None)
        log.warning("rate limits not checked for tenant %s: database unavailable", caller.tenant_id)


async def _send(
    services: Services,
    pool: EnginePool,
    lease: Lease,
    lora: LoraRef | None,
    route: Route,
    payload: EngineBody,
    request: Request,
    spans: Any,
    public_model: str,
) -> httpx.Response:
    """Open the upstream response. A 404 for an adapter the engine lost is retried once, and
    so is a batch request whose `priority` the engine refused (then without one)."""
    # The engine's own credentials (none for an engine without a key); with tracing on,
    # the engine-call span's `traceparent` for vLLM.
    headers = spans.engine_headers(lease.url, route.path, {**_JSON_HEADERS, **lease.engine.headers})
    reloaded = False
    while True:
        body = payload.for_engine(lease.engine)
        req = services.client.build_request("POST", lease.url + route.path, content=body, headers=headers)
        try:
            resp = await until_disconnect(request, services.client.send(req, stream=True))
        except httpx.TransportError as exc:
            pool.mark_down(lease.engine)
            raise TailorError(
                503, "The inference engine became unavailable; retry shortly.", code="engine_unavailable"
            ) from exc
        if resp.status_code == 404 and lora is not None and not reloaded:
            await resp.aclose()
            reloaded = True
            pool.forget(lease.engine, lora.name)
            await _reload(pool, lease, lora, public_model)
            continue
        if body is payload.prioritised and await _refuses_priority(resp):
            await resp.aclose()
            _stop_sending_priority(lease.engine)
            continue
        return resp


async def _refuses_priority(resp: httpx.Response) -> bool:
    """Whether the engine answered 400 because of the `priority` field: older vLLM engines
    refused one other than 0 without `--scheduling-policy priority`, and servers that know no
    such field may refuse it as unknown. (vLLM 0.32 ignores it without the policy.)"""
    if resp.status_code != 400:
        return False
    await resp.aread()  # kept: read again by whoever gets the response, when it is not this
    return b"priority" in resp.content.lower()


def _stop_sending_priority(engine: Engine) -> None:
    if engine.takes_priority:
        engine.takes_priority = False
        log.warning(
            "engine %s refused the `priority` of a batch request: batch requests go to it without one, and are "
            "scheduled like interactive ones there. Start it with --scheduling-policy priority (vLLM) to keep "
            "interactive requests first.",
            engine.url,
        )


class ClientDisconnected(Exception):
    """The client went away before its answer was complete."""


async def until_disconnect(request: Request, coro: Any) -> Any:
    """Await `coro`, cancelling it (and so the engine's work) if the client goes away."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


async def _finish_body(
    pool: EnginePool,
    lease: Lease,
    route: Route,
    kind: Kind,
    resp: httpx.Response,
    record: InteractionRecord,
    finish: Callable[..., None],
    interaction_id: str,
    request: Request,
    presenter: Presenter,
) -> Response:
    try:
        raw = await until_disconnect(request, resp.aread())
    except ClientDisconnected:
        finish(CLIENT_CLOSED, "client disconnected")
        return Response(status_code=CLIENT_CLOSED)
    except httpx.HTTPError as exc:
        pool.mark_down(lease.engine)
        err = TailorError(503, "The inference engine failed while answering; retry shortly.", code="engine_unavailable")
        finish(err.status, f"{type(exc).__name__}: {exc}")
        return _json(err.body(), err.status, interaction_id)
    finally:
        await resp.aclose()
    try:
        body = route.body(orjson.loads(raw), model=record.model, id=interaction_id)
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        err = _bad_engine_output()
        finish(err.status, f"unreadable engine answer: {type(exc).__name__}")
        return _json(err.body(), err.status, interaction_id)
    choices = body.get("choices") or []
    if choices:
        record.response_text = _text_of(choices[0], kind)
        record.finish_reason = choices[0].get("finish_reason")
    usage = body.get("usage") or {}
    record.prompt_tokens = usage.get("prompt_tokens")
    record.completion_tokens = usage.get("completion_tokens")
    # Before the log record is final: a presenter that fails (storing a response) fails the request.
    try:
        answer = await presenter.body(body)
    except TailorError as exc:
        finish(exc.status, exc.message)
        return _json(exc.body(), exc.status, interaction_id)
    finish(200)
    return _json(answer, 200, interaction_id)


async def _sse_data(resp: httpx.Response) -> AsyncIterator[bytes]:
    """The `data:` payloads of a server-sent-event stream, as bytes.

    Works on raw bytes: decoding every chunk to text only to encode it again costs more
    than the whole schema fix-up.
    """
    pending = b""
    async for block in resp.aiter_bytes():
        pending += block
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    if pending.startswith(b"data:"):
        yield pending[5:].strip()


def _internal_error() -> TailorError:
    return TailorError(500, "Tailor failed while handling this request; retry shortly.", code="internal_error")


def _bad_engine_output() -> TailorError:
    return TailorError(502, "The inference engine sent an answer Tailor could not read.", code="engine_error")


class _StreamCall:
    """One streamed answer: its engine response, lease and log record, closed exactly once.

    The generator closes it when the stream ends; the response closes it when the client
    goes away before the generator ever ran (Starlette then never starts or finalises it).
    """

    def __init__(
        self,
        services: Services,
        held: _HeldLease,
        resp: httpx.Response,
        record: InteractionRecord,
        finish: Callable[..., None],
    ) -> None:
        self.services = services
        self.held = held
        self.lease = held.lease
        self.resp = resp
        self.record = record
        self.finish = finish
        self.parts: list[str] = []
        self.closed = False

    async def close(self, status: int, error: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.held.release()
        self.record.response_text = "".join(self.parts)
        self.finish(status, error)
        await self.resp.aclose()

    async def events(
        self,
        route: Route,
        kind: Kind,
        public_model: str,
        interaction_id: str,
        presenter: Presenter,
        replace: dict[str, str],
        started: float,
    ) -> AsyncIterator[bytes]:
        record = self.record
        status, error = 200, None
        try:
            opening = presenter.opening()
            if opening:
                yield opening
            async for payload in _sse_data(self.resp):
                if payload == b"[DONE]":
                    try:
                        closing = await presenter.closing()
                    except TailorError as exc:
                        status, error = exc.status, exc.message
                        closing = presenter.failure(exc.body())
                    except Exception as exc:
                        log.exception("request %s failed after its answer was complete", interaction_id)
                        status, error = 500, f"internal error: {type(exc).__name__}"
                        closing = presenter.failure(_internal_error().body())
                    yield closing
                    break
                try:
                    chunk = orjson.loads(payload)
                    failed = normalize.stream_error(chunk, replace=replace)
                    if failed is None:
                        chunk = route.chunk(chunk, model=public_model, id=interaction_id)
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    failed = _bad_engine_output().body()
                if failed is not None:
                    status, error = 502, failed["error"]["message"]
                    yield presenter.failure(failed)
                    break
                usage = chunk.get("usage")
                if usage:
                    record.prompt_tokens = usage.get("prompt_tokens")
                    record.completion_tokens = usage.get("completion_tokens")
                choices = chunk.get("choices") or []
                for choice in choices:
                    if choice.get("index", 0) != 0:
                        continue
                    text = _text_of(choice, kind)
                    if text:
                        if record.ttft_ms is None:
                            record.ttft_ms = (time.perf_counter() - started) * 1000
                        self.parts.append(text)
                    if choice.get("finish_reason"):
                        record.finish_reason = choice["finish_reason"]
                out = presenter.chunk(chunk)
                if out:
                    yield out
            else:
                # The engine closed the stream without its `[DONE]`: the answer is incomplete.
                err = _bad_engine_output()
                status, error = err.status, "engine stream ended without [DONE]"
                yield presenter.failure(err.body())
        except asyncio.CancelledError:
            status, error = CLIENT_CLOSED, "client disconnected"
            raise
        except httpx.HTTPError as exc:
            self.held.pool.mark_down(self.lease.engine)
            status, error = 503, f"engine failed mid-stream: {type(exc).__name__}"
            err = TailorError(
                503, "The inference engine failed while streaming; retry shortly.", code="engine_unavailable"
            )
            yield presenter.failure(err.body())
        finally:
            await self.close(status, error)


class _ClosingStreamingResponse(StreamingResponse):
    def __init__(self, content: AsyncIterator[bytes], *, on_exit: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_exit = on_exit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_exit()
