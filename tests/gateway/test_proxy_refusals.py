"""The serving hot path (gateway/proxy/) against a fake vLLM (see test_proxy.py): what the
gateway refuses, the interaction row every request leaves, what reaches the engine, and
leases that always come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from gateway.proxy import INTERACTION_HEADER
from tests.gateway.gateway_world import (
    BASE,
    CHAT,
    COMPLETION,
    ENGINE,
    Gateway,
    Running,
    answer_with,
    error_of,
    events,
    pieces,
    post_scope,
    raw_json,
    stream_of,
    tenant_view,
)
from tests.gateway.module_gateway import gateway_beside_shared, module_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")


shared = module_gateway("gateway")
shared_small = gateway_beside_shared("gateway-small", max_request_bytes=2_000)


@pytest_asyncio.fixture(loop_scope="module")
async def small(shared_small: Running, tmp_path: Path) -> AsyncIterator[Gateway]:
    async for g in tenant_view(shared_small, tmp_path):
        yield g


# --------------------------------------------------------------------------- gateway refusals


async def test_missing_and_bad_keys_are_401(gw: Gateway) -> None:
    r = await gw.http.post("/v1/chat/completions", json=CHAT)
    assert error_of(r, 401)["code"] == "missing_api_key"
    r = await gw.http.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer nope"})
    assert error_of(r, 401)["code"] == "invalid_api_key"
    r = await gw.http.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Basic abc"})
    error_of(r, 401)
    assert gw.fake.completions() == []


async def test_unknown_model_is_404(gw: Gateway) -> None:
    r = await gw.chat(model="no-such-model")
    err = error_of(r, 404, param="model")
    assert err["code"] == "model_not_found"
    assert r.headers[INTERACTION_HEADER]
    assert gw.fake.completions() == []
    [row] = await gw.rows()
    assert row.status_code == 404 and row.model == "no-such-model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "temperature": 5}, "temperature"),
        ({"model": BASE}, "messages"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({**CHAT, "n": 0}, "n"),
        ({k: v for k, v in CHAT.items() if k != "model"}, "model"),
    ],
)
async def test_bad_body_is_400_with_param(gw: Gateway, body: dict[str, Any], param: str) -> None:
    r = await gw.http.post("/v1/chat/completions", json=body, headers=gw.auth)
    err = error_of(r, 400, param=param)
    assert err["type"] == "invalid_request_error"
    assert gw.fake.completions() == []


async def test_invalid_json_is_400(gw: Gateway) -> None:
    r = await gw.http.post(
        "/v1/chat/completions",
        content=b'{"model": ',
        headers={**gw.auth, "content-type": "application/json"},
    )
    err = error_of(r, 400)
    assert err["param"] is None and "JSON" in err["message"]


async def test_unknown_route_and_wrong_method(gw: Gateway) -> None:
    assert error_of(await gw.http.get("/v1/nope", headers=gw.auth), 404)["code"] == "unknown_url"
    # (GET /v1/chat/completions lists stored completions: tests/gateway/test_stored_completions_api.py)
    error_of(await gw.http.get("/v1/completions", headers=gw.auth), 405)
    error_of(await gw.http.put("/v1/chat/completions", headers=gw.auth), 405)


async def test_oversized_body_is_413(small: Gateway) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5_000}]}
    r = await small.http.post("/v1/chat/completions", json=big, headers=small.auth)
    assert error_of(r, 413)["code"] == "request_too_large"
    assert small.fake.completions() == []
    # Small enough still goes through.
    assert (await small.chat()).status_code == 200


async def test_oversized_chunked_body_is_413(small: Gateway) -> None:
    """No content-length (chunked upload): the limit is enforced while reading."""
    data = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5_000}]}).encode()
    r = await small.http.post(
        "/v1/chat/completions",
        content=pieces(data, 1000),
        headers={**small.auth, "content-type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert error_of(r, 413)["code"] == "request_too_large"
    assert small.fake.completions() == []


async def asgi_call(
    app: FastAPI,
    path: str,
    body: bytes,
    headers: dict[str, str],
    receive_after_body: Callable[[int], Any],
    *,
    send_suspends: bool = False,
) -> list[dict[str, Any]]:
    """Call the ASGI app as uvicorn does (spec 2.3), with a scripted `receive`.

    `receive_after_body(n)` is awaited for the n-th receive() after the body was read.
    `send_suspends`: send() yields to the loop, as a server's does when it really waits
    for the socket (hypercorn always; uvicorn under write back-pressure).
    """
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive_after_body(calls - 1)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if send_suspends:
            await asyncio.sleep(0)

    scope = post_scope(path, {"content-type": "application/json", "content-length": str(len(body)), **headers})
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    "send_suspends",
    [
        False,
        True,
    ],
)
async def test_client_gone_right_after_engine_answered_releases_the_lease(
    gw: Gateway, shared: Running, send_suspends: bool
) -> None:
    async def after_body(n: int) -> dict[str, Any]:
        if n == 1:  # the engine call's disconnect watcher (gateway.proxy.engine_call.send): the client is still there
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}  # StreamingResponse's listener: now it is gone

    body = json.dumps({**CHAT, "stream": True}).encode()
    await asgi_call(shared.app, "/v1/chat/completions", body, gw.auth, after_body, send_suspends=send_suspends)
    assert len(gw.fake.completions()) == 1
    try:
        assert gw.engine.inflight == 0, "lease leaked"
        rows = await gw.rows()
        assert [row.status_code for row in rows] == [499]
    finally:
        gw.engine.inflight = 0  # keep the leak out of the fixture's own check


async def test_client_gone_while_waiting_for_the_engine(gw: Gateway, shared: Running) -> None:
    async def slow(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        await asyncio.sleep(3600)  # the engine is still thinking when the client leaves
        raise AssertionError("not cancelled")

    async def after_body(n: int) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    gw.fake.script.append(slow)  # type: ignore[arg-type]
    with contextlib.suppress(asyncio.CancelledError):
        await asgi_call(shared.app, "/v1/chat/completions", json.dumps(CHAT).encode(), gw.auth, after_body)
    assert gw.engine.inflight == 0
    [row] = await gw.rows()
    assert row.status_code == 499 and row.error == "client disconnected"


# --------------------------------------------------------------------------- interaction log


async def test_one_log_row_per_request(gw: Gateway) -> None:
    r1 = await gw.chat(temperature=0)
    r2 = await gw.chat(stream=True)
    r3 = await gw.http.post("/v1/completions", json=COMPLETION, headers=gw.auth)
    r4 = await gw.chat(model="nope")
    rows = {row.id: row for row in await gw.rows()}
    assert len(rows) == 4
    ids = [r.headers[INTERACTION_HEADER] for r in (r1, r2, r3, r4)]
    assert set(rows) == set(ids)

    one = rows[ids[0]]
    assert (one.status_code, one.endpoint, one.model, one.stream) == (
        200,
        "chat.completions",
        BASE,
        False,
    )
    assert one.response_text == "The capital of France is Paris."
    assert (one.prompt_tokens, one.completion_tokens, one.finish_reason) == (37, 8, "stop")
    assert one.engine == ENGINE and one.tenant_id == gw.tenant_id and one.api_key_id
    assert one.request["messages"] == CHAT["messages"] and "model" not in one.request
    assert one.latency_ms is not None and one.latency_ms >= 0

    two = rows[ids[1]]
    assert (two.status_code, two.stream) == (200, True)
    assert two.response_text == "The capital of France is Paris."
    assert (two.prompt_tokens, two.completion_tokens, two.finish_reason) == (37, 8, "stop")
    assert two.ttft_ms is not None and two.ttft_ms <= two.latency_ms
    # The log keeps what the client asked, not what the gateway added upstream.
    assert "stream_options" not in two.request

    three = rows[ids[2]]
    assert (three.endpoint, three.response_text, three.finish_reason) == (
        "completions",
        " Paris.\n\nThe answer is:",
        "length",
    )

    four = rows[ids[3]]
    assert (four.status_code, four.response_text, four.engine) == (404, None, None)


# --------------------------------------------------------------------------- what reaches the engine


async def test_seed_beyond_int64_is_400_before_any_lease(gw: Gateway) -> None:
    # It used to fail serialising after the lease was taken: a 500, a leaked lease, no log row.
    err = error_of(await gw.chat(seed=2**64), 400, param="seed")
    assert err["type"] == "invalid_request_error"
    error_of(await gw.chat(logit_bias={str(i): 1 for i in range(301)}), 400, param="logit_bias")
    error_of(await gw.chat(logit_bias={"5": 101}), 400)
    assert gw.fake.completions() == []
    assert (await gw.chat(seed=2**63 - 1, logit_bias={"5": -100})).status_code == 200


@pytest.mark.parametrize("field", ["priority", "request_id", "cache_salt", "kv_transfer_params", "chat_template"])
async def test_engine_only_fields_are_refused(gw: Gateway, field: str) -> None:
    err = error_of(await gw.chat(**{field: "x"}), 400, param=field)
    assert err["code"] == "unknown_parameter"
    assert gw.fake.completions() == []
    [row] = await gw.rows()
    assert row.status_code == 400


async def test_operator_allowed_field_reaches_the_engine(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gw.services.settings, "engine_allowed_extra_fields", ["top_n_tokens", "vllm_xargs"])
    assert (await gw.chat(top_n_tokens=5)).status_code == 200
    assert gw.fake.completions()[0].body["top_n_tokens"] == 5
    # Allowed fields are sent as they are; one that cannot be encoded is a 400 before any lease.
    error_of(await gw.chat(vllm_xargs={"x": 2**64}), 400, param="vllm_xargs")
    assert len(gw.fake.completions()) == 1


async def test_a_tenants_priority_is_refused_even_if_listed(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batch requests are scheduled after interactive ones by `priority`: no tenant may set one,
    # on any route, even where settings were changed behind the validator's back.
    monkeypatch.setattr(gw.services.settings, "engine_allowed_extra_fields", ["priority"])
    assert error_of(await gw.chat(priority=-1), 400, param="priority")["code"] == "unknown_parameter"
    asked = {"model": BASE, "input": "hi", "priority": -1}
    r = await gw.http.post("/v1/responses", json=asked, headers=gw.auth)
    assert error_of(r, 400, param="priority")["code"] == "unknown_parameter"
    assert gw.fake.completions() == []
    assert (await gw.chat()).status_code == 200
    assert "priority" not in gw.fake.completions()[0].body  # interactive: the engine's default, the highest


async def test_every_engine_request_carries_the_tenants_cache_salt(gw: Gateway, shared: Running) -> None:
    await gw.chat()
    await gw.http.post("/v1/completions", json={**COMPLETION, "stream": True}, headers=gw.auth)
    salts = {s.body["cache_salt"] for s in gw.fake.completions()}
    assert len(salts) == 1
    [salt] = salts
    assert gw.tenant_id not in salt and len(salt) <= 128

    other = await tenant_view(shared, gw.tmp).__anext__()
    await other.chat()
    [sent] = other.fake.completions()
    assert sent.body["cache_salt"] not in (salt, None)


async def test_engine_key_is_sent_with_every_completion(gw: Gateway) -> None:
    gw.engine.headers = {"Authorization": "Bearer engine-key"}
    try:
        await gw.chat()
        await gw.chat(stream=True)
    finally:
        gw.engine.headers = {}
    assert [s.authorization for s in gw.fake.completions()] == ["Bearer engine-key"] * 2


# --------------------------------------------------------------------------- leases always come back


def _error_body_that_breaks(_request: httpx.Request, _body: dict[str, Any]) -> httpx.Response:
    async def gen() -> AsyncIterator[bytes]:
        yield b'{"error": '
        raise httpx.ReadError("connection reset by peer")

    return httpx.Response(500, content=gen())


def _normaliser_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("a bug in the normaliser")

    monkeypatch.setattr("gateway.normalize.error", broken)


def _lose_adapter_and_fail_reload(gw: Gateway) -> None:
    gw.fake.loras.clear()
    gw.fake.load_error = (500, "Internal Server Error")


FAILURES: dict[str, Callable[[Gateway, pytest.MonkeyPatch], Any]] = {
    "engine unreachable": lambda gw, _mp: gw.fake.script.append(httpx.ConnectError("refused")),
    "engine error answer": lambda gw, _mp: gw.fake.script.append(answer_with(400, {"detail": "bad"})),
    "error body cut off": lambda gw, _mp: gw.fake.script.append(_error_body_that_breaks),
    "garbage 200": lambda gw, _mp: gw.fake.script.append(answer_with(200, b"<html>")),
    "body cut off": lambda gw, _mp: gw.fake.script.append(
        stream_of(json.dumps(raw_json("chat")["body"]).encode(), fail_after=20)
    ),
    "bug while normalising": lambda gw, mp: (gw.fake.script.append(answer_with(400, {"x": 1})), _normaliser_bug(mp)),
    "reload fails": lambda gw, _mp: _lose_adapter_and_fail_reload(gw),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("failure", list(FAILURES))
async def test_lease_comes_back_after_every_kind_of_failure(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, failure: str, stream: bool
) -> None:
    version_id = gw.register_adapter("helper")
    assert (await gw.chat(model="helper")).status_code == 200  # resident now
    FAILURES[failure](gw, monkeypatch)
    r = await gw.chat(model="helper", stream=stream)
    assert r.status_code >= 400 or (stream and "error" in events(r)[-1]), r.text
    assert r.headers.get(INTERACTION_HEADER)
    monkeypatch.undo()
    gw.fake.load_error = None
    assert gw.engine.inflight == 0
    assert gw.engine.users == {}
    rows = await gw.rows()
    assert len(rows) == 2 and rows[-1].status_code >= 400

    # Nothing pins the adapter: it is the one evicted for the next.
    gw.engine.healthy = True
    monkeypatch.setattr(gw.services.pool, "max_resident", 1)
    was_resident = version_id in gw.engine.resident  # not where its reload failed
    gw.register_adapter("next")
    assert (await gw.chat(model="next")).status_code == 200
    assert version_id not in gw.engine.resident
    unloads = [s.body["lora_name"] for s in gw.fake.seen if s.path == "/v1/unload_lora_adapter"]
    assert unloads == ([version_id] if was_resident else [])
