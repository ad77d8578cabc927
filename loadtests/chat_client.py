"""Timed chat completions against an OpenAI-compatible server (Tailor or vLLM itself).

`send_one` posts one request and measures it: whole latency, for streams the time to the first
piece of text (TTFT) and the completion tokens from the final usage chunk. The benchmarks send
`chat_body(..., ignore_eos)` requests so that every one generates exactly `max_tokens` tokens,
whatever the model would say.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Target:
    name: str  # "direct" or "gateway"
    base_url: str
    model: str
    api_key: str | None = None


@dataclass
class RequestResult:
    ok: bool
    latency_s: float
    ttft_s: float | None = None
    completion_tokens: int = 0
    error: str | None = None


def auth(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def chat_body(model: str, prompt: str, max_tokens: int, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        # Generate exactly max_tokens on both paths, whatever the model would say.
        "ignore_eos": True,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def make_client(target: Target, concurrency: int) -> httpx.AsyncClient:
    headers = {"content-type": "application/json", **auth(target.api_key)}
    # Room for every worker to keep its own connection: the pool must never be what queues.
    slots = concurrency * 2 + 8
    return httpx.AsyncClient(
        base_url=target.base_url,
        headers=headers,
        limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
        timeout=httpx.Timeout(600.0, connect=10.0),
    )


async def send_one(client: httpx.AsyncClient, body: dict[str, Any]) -> RequestResult:
    started = time.perf_counter()
    try:
        if body["stream"]:
            return await _send_stream(client, body, started)
        return await _send_plain(client, body, started)
    except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
        return RequestResult(ok=False, latency_s=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")


async def _send_stream(client: httpx.AsyncClient, body: dict[str, Any], started: float) -> RequestResult:
    ttft: float | None = None
    tokens: int | None = None
    async with client.stream("POST", CHAT_PATH, content=orjson.dumps(body)) as resp:
        if resp.status_code != 200:
            raw = await resp.aread()
            return _failed(started, f"HTTP {resp.status_code}: {raw[:200]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = orjson.loads(payload)
            if "error" in chunk:
                return _failed(started, f"stream error: {str(chunk['error'])[:200]}")
            # The first chunk only carries the role; TTFT is the first piece of text.
            if ttft is None and _has_content(chunk):
                ttft = time.perf_counter() - started
            usage = chunk.get("usage")
            if usage:
                tokens = usage.get("completion_tokens")
    latency = time.perf_counter() - started
    if tokens is None:
        return _failed(started, "stream ended without a usage chunk")
    return RequestResult(ok=True, latency_s=latency, ttft_s=ttft, completion_tokens=tokens)


async def _send_plain(client: httpx.AsyncClient, body: dict[str, Any], started: float) -> RequestResult:
    resp = await client.post(CHAT_PATH, content=orjson.dumps(body))
    latency = time.perf_counter() - started
    if resp.status_code != 200:
        return _failed(started, f"HTTP {resp.status_code}: {resp.text[:200]}")
    usage = orjson.loads(resp.content).get("usage") or {}
    return RequestResult(ok=True, latency_s=latency, completion_tokens=int(usage.get("completion_tokens") or 0))


def _has_content(chunk: dict[str, Any]) -> bool:
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ())


def _failed(started: float, error: str) -> RequestResult:
    return RequestResult(ok=False, latency_s=time.perf_counter() - started, error=error)


def first_error(requests: list[RequestResult]) -> str | None:
    return next((q.error for q in requests if q.error), None)
