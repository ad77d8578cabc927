"""The serving hot path (gateway/proxy/) against a fake vLLM, end to end through the app.

No engine runs: the services' upstream HTTP client is swapped for an `httpx.MockTransport`
whose handler plays vLLM's OpenAI server, answering with the raw bodies captured from a
real vLLM 0.32 in tests/fixtures/vllm_raw/. Streams are cut into small byte pieces that
fall anywhere (mid-line, mid-JSON, mid-UTF-8 character) to prove the gateway re-frames
server-sent events itself. Every body the client sees is checked against OpenAI's
published schema, and every request must leave exactly one interaction row.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.proxy import INTERACTION_HEADER
from tests.gateway.gateway_world import (
    BASE,
    CHAT,
    COMPLETION,
    Gateway,
    answer_with,
    chunks,
    error_of,
    events,
    raw_json,
    raw_sse,
    stream_of,
)
from tests.gateway.module_gateway import module_gateway
from tests.openai_schema import COMPLETION_STREAM, validate

pytestmark = pytest.mark.asyncio(loop_scope="module")


shared = module_gateway("gateway")


# --------------------------------------------------------------------------- chat, non-stream


async def test_chat_is_normalised_and_named_for_the_client(gw: Gateway) -> None:
    r = await gw.chat(temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == BASE
    assert body["id"] == r.headers[INTERACTION_HEADER]
    assert body["id"].startswith("chatcmpl")
    assert body["choices"][0]["message"]["content"] == "The capital of France is Paris."
    assert body["usage"] == {"prompt_tokens": 37, "completion_tokens": 8, "total_tokens": 45}
    # vLLM internals are gone.
    for leaked in ("system_fingerprint", "prompt_token_ids", "kv_transfer_params", "metrics"):
        assert leaked not in body
    assert "stop_reason" not in body["choices"][0]

    [sent] = gw.fake.completions()
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == BASE
    assert sent.body["messages"] == CHAT["messages"]
    assert sent.body["temperature"] == 0
    assert "stream_options" not in sent.body  # only streams are asked for usage


async def test_completion_non_stream(gw: Gateway) -> None:
    r = await gw.http.post("/v1/completions", json=COMPLETION, headers=gw.auth)
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateCompletionResponse")
    assert body["model"] == BASE and body["id"] == r.headers[INTERACTION_HEADER]
    assert body["id"].startswith("cmpl")
    assert body["choices"][0]["text"] == " Paris.\n\nThe answer is:"


async def test_non_ascii_answer_survives(gw: Gateway) -> None:
    gw.fake.replace_text = ("Paris", "Pårïs 🗼")
    r = await gw.chat()
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "The capital of France is Pårïs 🗼."


# --------------------------------------------------------------------------- streams


@pytest.mark.parametrize(("piece", "newline"), [(7, "\n"), (1, "\n"), (5, "\r\n"), (1 << 16, "\n")])
async def test_stream_reframed_across_arbitrary_byte_boundaries(gw: Gateway, piece: int, newline: str) -> None:
    gw.fake.piece, gw.fake.newline = piece, newline
    gw.fake.replace_text = ("Paris", "Pårïs 🗼")  # multi-byte characters split mid-sequence
    r = await gw.chat(stream=True)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-cache"
    got = chunks(r)
    iid = r.headers[INTERACTION_HEADER]
    assert all(c["id"] == iid and c["model"] == BASE for c in got)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got if c["choices"])
    assert text == "The capital of France is Pårïs 🗼."
    assert got[0]["choices"][0]["delta"]["role"] == "assistant"
    assert got[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_without_usage_requested_hides_the_usage_chunk(gw: Gateway) -> None:
    r = await gw.chat(stream=True)
    got = chunks(r)
    assert all(c["choices"] for c in got), "a usage-only chunk reached a client that did not ask"
    assert all(c.get("usage") is None for c in got)
    [sent] = gw.fake.completions()
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    # ... and the log still has the counts.
    [row] = await gw.rows()
    assert (row.prompt_tokens, row.completion_tokens) == (37, 8)


async def test_stream_with_usage_requested_gets_it(gw: Gateway) -> None:
    r = await gw.chat(stream=True, stream_options={"include_usage": True})
    got = chunks(r)
    assert got[-1]["choices"] == []
    assert got[-1]["usage"] == {"prompt_tokens": 37, "completion_tokens": 8, "total_tokens": 45}
    [sent] = gw.fake.completions()
    assert sent.body["stream_options"] == {"include_usage": True}


async def test_stream_options_false_is_overridden_upstream_but_honoured_downstream(
    gw: Gateway,
) -> None:
    r = await gw.chat(stream=True, stream_options={"include_usage": False})
    assert all(c["choices"] for c in chunks(r))
    assert gw.fake.completions()[0].body["stream_options"] == {"include_usage": True}


async def test_completion_stream(gw: Gateway) -> None:
    r = await gw.http.post("/v1/completions", json={**COMPLETION, "stream": True}, headers=gw.auth)
    got = chunks(r, COMPLETION_STREAM)
    assert all(c["choices"] for c in got)
    assert "".join(c["choices"][0]["text"] for c in got) == " Paris.\n\nThe answer is:"
    assert all(c["object"] == "text_completion" and c["model"] == BASE for c in got)


async def test_midstream_engine_error_event_is_normalised(gw: Gateway) -> None:
    gw.fake.script.append(stream_of(raw_sse("chat_stream_midstream_error").encode()))
    r = await gw.chat(stream=True)
    assert r.status_code == 200  # already sent when the engine failed
    payloads = events(r)
    for p in payloads[:-1]:
        validate(json.loads(p), "CreateChatCompletionStreamResponse")
    err = json.loads(payloads[-1])
    validate(err, "ErrorResponse")
    assert err["error"]["code"] is None and err["error"]["type"] == "server_error"
    [row] = await gw.rows()
    assert row.status_code == 502 and row.error == "Internal server error"
    assert row.response_text == "The capital"


async def test_engine_dying_midstream_is_reported_and_marks_it_down(gw: Gateway) -> None:
    data = raw_sse("chat_stream_usage").encode()
    gw.fake.script.append(stream_of(data, fail_after=len(data) // 2))
    r = await gw.chat(stream=True)
    assert r.status_code == 200
    payloads = events(r)
    err = json.loads(payloads[-1])
    validate(err, "ErrorResponse")
    assert err["error"]["code"] == "engine_unavailable"
    for p in payloads[:-1]:
        validate(json.loads(p), "CreateChatCompletionStreamResponse")
    assert gw.engine.healthy is False
    [row] = await gw.rows()
    assert row.status_code == 503 and "ReadError" in (row.error or "")


async def test_engine_dying_during_non_stream_body(gw: Gateway) -> None:
    gw.fake.script.append(stream_of(json.dumps(raw_json("chat")["body"]).encode(), fail_after=50))
    r = await gw.chat()
    assert error_of(r, 503)["code"] == "engine_unavailable"
    assert gw.engine.healthy is False
    [row] = await gw.rows()
    assert row.status_code == 503


# --------------------------------------------------------------------------- engine errors


@pytest.mark.parametrize(
    "capture",
    [
        "error_max_tokens_too_large",
        "error_bad_temperature",
        "error_unknown_model",
        "error_invalid_json",
    ],
)
async def test_engine_error_bodies_become_openai_errors(gw: Gateway, capture: str) -> None:
    raw = raw_json(capture)
    gw.fake.script.append(answer_with(raw["status"], raw["body"]))
    r = await gw.chat()
    err = error_of(r, raw["status"])
    assert not isinstance(err["code"], int)  # vLLM's integer code is not passed on
    assert "Valid aliases" not in err["message"]
    assert r.headers[INTERACTION_HEADER]
    [row] = await gw.rows()
    assert row.status_code == raw["status"] and row.error == err["message"]
    assert row.id == r.headers[INTERACTION_HEADER]


async def test_engine_error_keeps_param(gw: Gateway) -> None:
    raw = raw_json("error_max_tokens_too_large")
    gw.fake.script.append(answer_with(400, raw["body"]))
    # under the gateway's own cap, so the refusal is the engine's (its body is replayed)
    err = error_of(await gw.chat(max_tokens=4000), 400, param="max_tokens")
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith("max_tokens=100000 cannot be greater")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b"Internal Server Error"),
        (502, b""),
        (400, {"detail": "bad"}),
        (503, b"<html>oops</html>"),
    ],
)
async def test_engine_non_json_or_odd_errors(gw: Gateway, status: int, body: Any) -> None:
    gw.fake.script.append(answer_with(status, body))
    err = error_of(await gw.chat(), status)
    assert err["message"]


async def test_engine_stream_error_before_first_byte(gw: Gateway) -> None:
    raw = raw_json("error_stream_bad_temperature")
    gw.fake.script.append(answer_with(raw["status"], raw["body"]))
    err = error_of(await gw.chat(stream=True), 400, param="temperature")
    assert err["code"] is None


async def test_engine_unreachable_is_503_and_marks_it_down(gw: Gateway) -> None:
    gw.fake.script.append(httpx.ConnectError("connection refused"))
    err = error_of(await gw.chat(), 503)
    assert err["code"] == "engine_unavailable"
    assert gw.engine.healthy is False
    # With no healthy engine left, requests fail fast without reaching it.
    before = len(gw.fake.seen)
    err = error_of(await gw.chat(stream=True), 503)
    assert err["type"] == "service_unavailable_error"
    assert len(gw.fake.seen) == before
    rows = await gw.rows()
    assert [r.status_code for r in rows] == [503, 503]


async def test_no_healthy_engine_is_503(gw: Gateway) -> None:
    gw.engine.healthy = False
    r = await gw.http.post("/v1/completions", json=COMPLETION, headers=gw.auth)
    err = error_of(r, 503)
    assert err["code"] == "engine_unavailable"
    assert gw.fake.completions() == []


async def test_engine_timeout_is_503(gw: Gateway) -> None:
    gw.fake.script.append(httpx.ReadTimeout("timed out"))
    error_of(await gw.chat(), 503)


async def test_garbage_200_from_engine_is_an_openai_error_and_logged(gw: Gateway) -> None:
    gw.fake.script.append(answer_with(200, b"<html>proxy says hi</html>"))
    r = await gw.chat()
    assert r.status_code == 502, r.text
    error_of(r, 502)
    [row] = await gw.rows()
    assert row.status_code == 502


async def test_non_json_stream_event_is_reported_and_logged_as_failed(gw: Gateway) -> None:
    sse = raw_sse("chat_stream_usage").split("\n\n")
    sse.insert(3, "data: {truncated")
    gw.fake.script.append(stream_of("\n\n".join(sse).encode()))
    r = await gw.chat(stream=True)
    [row] = await gw.rows()
    assert row.status_code >= 500, (row.status_code, row.error)
    err = json.loads(events(r)[-1])
    validate(err, "ErrorResponse")
