"""Leasing an engine for a call and opening the engine's response.

An adapter the engine lost is loaded again and the request sent once more; a batch
request's `priority` that the engine refuses is dropped, for that engine, from then on. An
engine whose connection fails before it answers anything (it went away since its last health
check: refused, reset, closed) is marked down and the request goes to another engine of the
pool, once: nothing reached the client, and an engine's answer changes no state, so sending it
again costs at most the dead engine's work. A timeout after connecting is not retried: that
engine may be busy with the request, and a second copy would add to the load that made it slow.
"""

from __future__ import annotations

import logging

import httpx

from adapters.engines import Engine, Lease
from core.errors import TailorError
from gateway.proxy.call import CompletionCall
from gateway.proxy.disconnect import until_disconnect
from gateway.proxy.errors import load_failure

log = logging.getLogger("tailor.gateway")

_JSON_HEADERS = {"content-type": "application/json"}
# Timeouts of an engine that took the connection (or of this gateway's own pool): not resent.
_BUSY = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)


async def acquire(call: CompletionCall) -> Lease:
    upstream = call.upstream
    try:
        return await upstream.pool.acquire(upstream.lora, background=call.batch is not None)
    except TailorError as exc:
        raise load_failure(exc, upstream.lora, call.record.model) from exc


async def send(call: CompletionCall) -> httpx.Response:
    """Open the upstream response. A 404 for an adapter the engine lost is retried once, and
    so is a batch request whose `priority` the engine refused (then without one)."""
    pool, lora, payload = call.upstream.pool, call.upstream.lora, call.payload
    client = call.services.client
    url, headers = _target(call)
    reloaded = failed_over = False
    while True:
        lease = call.lease
        body = payload.for_engine(lease.engine)
        req = client.build_request("POST", url, content=body, headers=headers)
        try:
            resp = await until_disconnect(call.request, client.send(req, stream=True))
        except httpx.TransportError as exc:
            pool.mark_down(lease.engine)
            if not isinstance(exc, _BUSY) and not failed_over:
                failed_over = True
                await _lease_elsewhere(call)
                url, headers = _target(call)
                continue
            raise TailorError(
                503, "The inference engine became unavailable; retry shortly.", code="engine_unavailable"
            ) from exc
        if resp.status_code == 404 and lora is not None and not reloaded:
            await resp.aclose()
            reloaded = True
            pool.forget(lease.engine, lora.name)
            try:
                await pool.ensure_loaded(lease.engine, lora)
            except TailorError as exc:
                raise load_failure(exc, lora, call.record.model) from exc
            continue
        if body is payload.prioritised and await _refuses_priority(resp):
            await resp.aclose()
            _stop_sending_priority(lease.engine)
            continue
        return resp


def _target(call: CompletionCall) -> tuple[str, dict[str, str]]:
    """The leased engine's URL for the call's route, and the request's headers: the engine's own
    credentials (none for an engine without a key) and, with tracing on, the engine-call span's
    `traceparent` for vLLM (a span per engine the call is sent to)."""
    lease = call.lease
    headers = call.spans.engine_headers(lease.url, call.route.path, {**_JSON_HEADERS, **lease.engine.headers})
    return lease.url + call.route.path, headers


async def _lease_elsewhere(call: CompletionCall) -> None:
    """Move the call's lease to another engine (the pool no longer picks the one marked down);
    without one, the acquire's 503 is the answer."""
    moved = await acquire(call)
    call.upstream.pool.release(call.lease)
    call.lease = moved
    call.record.engine = moved.url
    log.warning("request %s moved to engine %s: the connection to the previous one failed", call.record.id, moved.url)


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
