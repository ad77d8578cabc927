"""Answering a call whose engine answer came whole (`stream` off): normalised, accounted
in the call's record, and sent through its presenter."""

from __future__ import annotations

import httpx
import orjson
from starlette.responses import Response

from core.errors import TailorError
from gateway.proxy.call import CompletionCall, text_of
from gateway.proxy.disconnect import ClientDisconnected, until_disconnect
from gateway.proxy.errors import CLIENT_CLOSED, bad_engine_output, json_response


async def finish_body(call: CompletionCall, resp: httpx.Response) -> Response:
    try:
        raw = await until_disconnect(call.request, resp.aread())
    except ClientDisconnected:
        call.finish(CLIENT_CLOSED, "client disconnected")
        return Response(status_code=CLIENT_CLOSED)
    except httpx.HTTPError as exc:
        call.upstream.pool.mark_down(call.lease.engine)
        err = TailorError(503, "The inference engine failed while answering; retry shortly.", code="engine_unavailable")
        call.finish(err.status, f"{type(exc).__name__}: {exc}")
        return json_response(err.body(), err.status, call.record.id)
    finally:
        await resp.aclose()
    record = call.record
    try:
        body = call.route.body(orjson.loads(raw), model=record.model, id=record.id)
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        err = bad_engine_output()
        call.finish(err.status, f"unreadable engine answer: {type(exc).__name__}")
        return json_response(err.body(), err.status, record.id)
    choices = body.get("choices") or []
    if choices:
        record.response_text = text_of(choices[0], call.kind)
        record.finish_reason = choices[0].get("finish_reason")
    usage = body.get("usage") or {}
    record.prompt_tokens = usage.get("prompt_tokens")
    record.completion_tokens = usage.get("completion_tokens")
    # Before the log record is final: a presenter that fails (storing a response) fails the request.
    try:
        answer = await call.presenter.body(body)
    except TailorError as exc:
        return call.refuse(exc)
    call.finish(200)
    return json_response(answer, 200, record.id)
