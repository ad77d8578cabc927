"""The soak's request mix: chat and text completions, half streamed, feedback, deliberate errors."""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from loadtests.chat_client import chat_body
from loadtests.prompts import PROMPTS
from loadtests.soak.samples import Counts

MAX_TOKENS = 16
FEEDBACK_SHARE = 0.25  # of successful answers, rated right after
ERROR_SHARE = 0.05  # of requests, deliberately wrong
STREAM_SHARE = 0.5

# Expected answers to the deliberate errors; anything else is a failure.
EXPECTED_STATUS = {"bad_model": 404, "invalid_body": 400, "unknown_key": 401}


@dataclass(frozen=True)
class Action:
    kind: str  # chat, completion, or one of EXPECTED_STATUS
    model: str = ""
    stream: bool = False


def choose(rng: random.Random, models: Sequence[str]) -> Action:
    if rng.random() < ERROR_SHARE:
        return Action(rng.choice(tuple(EXPECTED_STATUS)), models[0])
    kind = "chat" if rng.random() < 0.5 else "completion"
    return Action(kind, rng.choice(models), rng.random() < STREAM_SHARE)


def body_for(action: Action, prompt: str, *, malformed: bool = False) -> bytes:
    if action.kind == "invalid_body":
        # Malformed JSON or a wrong type (the caller picks): both must be a clean 400, not a 500.
        return b'{"model": ' if malformed else orjson.dumps({"model": action.model, "messages": "hi"})
    if action.kind == "completion":
        body: dict[str, Any] = {
            "model": action.model,
            "prompt": prompt,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": action.stream,
        }
    else:
        body = chat_body(action.model, prompt, MAX_TOKENS, stream=action.stream)
    if action.kind == "bad_model":
        body["model"] = "no-such-model-" + secrets.token_hex(4)
    return orjson.dumps(body)


def path_for(action: Action) -> str:
    return "/v1/completions" if action.kind == "completion" else "/v1/chat/completions"


@dataclass(frozen=True)
class Reply:
    status: int
    interaction_id: str | None = None
    error: str | None = None  # set when a 200 was not a complete answer


async def call(client: httpx.AsyncClient, action: Action, content: bytes, headers: dict[str, str]) -> Reply:
    if not action.stream:
        resp = await client.post(path_for(action), content=content, headers=headers)
        iid = resp.headers.get("x-tailor-interaction-id")
        if resp.status_code == 200 and not orjson.loads(resp.content).get("choices"):
            return Reply(200, iid, "answer without choices")
        return Reply(resp.status_code, iid)
    async with client.stream("POST", path_for(action), content=content, headers=headers) as resp:
        iid = resp.headers.get("x-tailor-interaction-id")
        if resp.status_code != 200:
            await resp.aread()
            return Reply(resp.status_code, iid)
        async for line in resp.aiter_lines():
            payload = line[5:].strip() if line.startswith("data:") else ""
            if payload == "[DONE]":
                return Reply(200, iid)
            if payload and "error" in orjson.loads(payload):
                return Reply(200, iid, f"stream error: {payload[:200]}")
    return Reply(200, iid, "stream ended without [DONE]")


def _fail(counts: Counts, what: str) -> None:
    counts.failed += 1
    if len(counts.failures) < 10:
        counts.failures.append(what)


async def perform(client: httpx.AsyncClient, action: Action, rng: random.Random, counts: Counts) -> None:
    prompt = PROMPTS[rng.randrange(len(PROMPTS))]
    headers = {"authorization": "Bearer sk-unknown-" + secrets.token_hex(8)} if action.kind == "unknown_key" else {}
    label = f"{action.kind}{' stream' if action.stream else ''} {action.model}"
    try:
        reply = await call(client, action, body_for(action, prompt, malformed=rng.random() < 0.5), headers)
    except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
        _fail(counts, f"{label}: {type(exc).__name__}: {exc}")
        return
    expected = EXPECTED_STATUS.get(action.kind, 200)
    if reply.status != expected or reply.error:
        _fail(counts, f"{label}: HTTP {reply.status} (expected {expected}) {reply.error or ''}".strip())
        return
    counts.by_kind[action.kind + (" stream" if action.stream else "")] += 1
    if action.kind in EXPECTED_STATUS:
        counts.expected_errors += 1
        return
    counts.done += 1
    if reply.interaction_id and rng.random() < FEEDBACK_SHARE:
        await post_feedback(client, reply.interaction_id, rng, counts)


async def post_feedback(client: httpx.AsyncClient, interaction_id: str, rng: random.Random, counts: Counts) -> None:
    body = {"interaction_id": interaction_id, "rating": rng.choice(("good", "bad"))}
    try:
        resp = await client.post("/v1/feedback", content=orjson.dumps(body))
    except httpx.HTTPError as exc:
        _fail(counts, f"feedback: {type(exc).__name__}: {exc}")
        return
    if resp.status_code != 201:
        _fail(counts, f"feedback: HTTP {resp.status_code} {resp.text[:200]}")
        return
    counts.done += 1
    counts.by_kind["feedback"] += 1
