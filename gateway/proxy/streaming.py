"""Answering a call chunk by chunk (`stream` on), never buffering the engine's stream.

The call's record is completed as chunks pass (usage, time to first token, the text), and
the lease and the engine response are closed exactly once, however the stream ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from starlette.responses import StreamingResponse

from core.errors import TailorError
from gateway import normalize
from gateway.proxy.call import CompletionCall, text_of
from gateway.proxy.errors import CLIENT_CLOSED, INTERACTION_HEADER, bad_engine_output, internal_error

log = logging.getLogger("tailor.gateway")


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


class _Stream:
    """One streamed answer: its call and engine response, closed exactly once.

    The generator closes it when the stream ends; the response closes it when the client
    goes away before the generator ever ran (Starlette then never starts or finalises it).
    """

    def __init__(self, call: CompletionCall, resp: httpx.Response) -> None:
        self.call = call
        self.resp = resp
        self.parts: list[str] = []
        self.closed = False

    async def close(self, status: int, error: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        call = self.call
        call.release()
        call.record.response_text = "".join(self.parts)
        call.finish(status, error)
        await self.resp.aclose()

    async def events(self) -> AsyncIterator[bytes]:
        call = self.call
        record, presenter, kind, started = call.record, call.presenter, call.kind, call.started
        chunk_of, public_model, interaction_id = call.route.chunk, record.model, record.id
        replace = call.engine_names
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
                        closing = presenter.failure(internal_error().body())
                    yield closing
                    break
                try:
                    chunk = orjson.loads(payload)
                    failed = normalize.stream_error(chunk, replace=replace)
                    if failed is None:
                        chunk = chunk_of(chunk, model=public_model, id=interaction_id)
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    failed = bad_engine_output().body()
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
                    text = text_of(choice, kind)
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
                err = bad_engine_output()
                status, error = err.status, "engine stream ended without [DONE]"
                yield presenter.failure(err.body())
        except asyncio.CancelledError:
            status, error = CLIENT_CLOSED, "client disconnected"
            raise
        except httpx.HTTPError as exc:
            call.upstream.pool.mark_down(call.lease.engine)
            status, error = 503, f"engine failed mid-stream: {type(exc).__name__}"
            err = TailorError(
                503, "The inference engine failed while streaming; retry shortly.", code="engine_unavailable"
            )
            yield presenter.failure(err.body())
        finally:
            await self.close(status, error)


class StreamedAnswer(StreamingResponse):
    """The client's stream of the engine's `resp`; it owns the call's lease from now on, and
    closes the stream when the client goes away."""

    def __init__(self, call: CompletionCall, resp: httpx.Response) -> None:
        self._stream = _Stream(call, resp)
        call.streaming = True
        super().__init__(
            self._stream.events(),
            media_type="text/event-stream",
            headers={INTERACTION_HEADER: call.record.id, "cache-control": "no-cache"},
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.close(CLIENT_CLOSED, "client disconnected")
