"""The serving hot path (gateway/proxy/) against a fake vLLM, end to end through the app.

No engine runs: the services' upstream HTTP client is swapped for an `httpx.MockTransport`
whose handler plays vLLM's OpenAI server, answering with the raw bodies captured from a
real vLLM 0.32 in tests/fixtures/vllm_raw/. Streams are cut into small byte pieces that
fall anywhere (mid-line, mid-JSON, mid-UTF-8 character) to prove the gateway re-frames
server-sent events itself. Every body the client sees is checked against OpenAI's
published schema, and every request must leave exactly one interaction row.
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

from adapters import checkpoints
from core.quotas import Quotas
from gateway.proxy import INTERACTION_HEADER
from tests.gateway.gateway_world import (
    ADMIN,
    BASE,
    CHAT,
    COMPLETION,
    ENGINE,
    Gateway,
    Running,
    answer_with,
    chunks,
    error_of,
    events,
    pieces,
    raw_json,
    raw_sse,
    running_gateway,
    serial,
    stream_of,
    tenant_view,
    write_tiny_adapter,
)
from tests.openai_schema import COMPLETION_STREAM, validate
from trainer import job_records, jobs

pytestmark = pytest.mark.asyncio(loop_scope="module")


# One app per module (building and migrating one costs ~0.15 s); each test gets its own
# tenant, so rows and adapter names never collide.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async with running_gateway(tmp_path_factory.mktemp("gateway")) as run:
        yield run


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_small(tmp_path_factory: pytest.TempPathFactory, shared: Running) -> AsyncIterator[Running]:
    # Same database as `shared`: migrating a second one would double the module's set-up time.
    async with running_gateway(
        tmp_path_factory.mktemp("gateway-small"),
        max_request_bytes=2_000,
        database_url=shared.services.settings.database_url,
    ) as run:
        yield run


@pytest_asyncio.fixture(loop_scope="module")
async def small(shared_small: Running, tmp_path: Path) -> AsyncIterator[Gateway]:
    async for g in tenant_view(shared_small, tmp_path):
        yield g


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

    raw_headers = [
        (k.lower().encode(), v.encode())
        for k, v in {
            "host": "gateway.test",
            "content-type": "application/json",
            "content-length": str(len(body)),
            **headers,
        }.items()
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.test", 80),
        "state": {},
    }
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


# --------------------------------------------------------------------------- adapters


async def test_adapter_request_loads_it_once_and_hides_its_engine_name(gw: Gateway) -> None:
    version_id = gw.register_adapter("helper")
    r = await gw.chat(model="helper")
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == "helper"
    assert version_id not in r.text

    r = await gw.chat(model="helper", stream=True, stream_options={"include_usage": True})
    got = chunks(r)
    assert all(c["model"] == "helper" for c in got)
    assert version_id not in r.text

    [load] = gw.fake.loads()
    assert load.body["lora_name"] == version_id
    assert Path(load.body["lora_path"]).is_dir()
    assert (Path(load.body["lora_path"]) / "adapter_model.safetensors").is_file()
    assert [s.body["model"] for s in gw.fake.completions()] == [version_id, version_id]
    assert version_id in gw.engine.resident

    rows = await gw.rows()
    assert {(row.model, row.adapter_version_id) for row in rows} == {("helper", version_id)}


async def test_pinned_version_name(gw: Gateway) -> None:
    v1 = gw.register_adapter("helper")
    gw.register_adapter("helper")
    r = await gw.chat(model="helper@v1")
    assert r.status_code == 200 and r.json()["model"] == "helper@v1"
    assert gw.fake.completions()[0].body["model"] == v1


async def test_checkpoint_name_serves_the_checkpoints_adapter(gw: Gateway) -> None:
    """A fine-tuning job's checkpoint id (adapters.checkpoints) is a model: the engine loads
    the checkpoint's files under the checkpoint's own id, which the client never sees."""
    quotas = Quotas.from_settings(gw.services.settings)
    job = jobs.submit(
        gw.services.db,
        gw.tenant_id,
        method="supervised",
        model=BASE,
        adapter_name="helper",
        quotas=quotas,
        actor="test",
    )
    limits = gw.services.limits
    digest = checkpoints.store_checkpoint(
        gw.services.store,
        write_tiny_adapter(gw.tmp / f"ckpt-{next(serial)}"),
        base=limits.base,
        max_rank=limits.max_rank,
        max_bytes=limits.max_bytes,
    )
    saved = job_records.add_checkpoint(gw.services.db, job.id, step=3, metrics={}, path="ckpt", digest=digest)
    model = checkpoints.checkpoint_model("helper", job.id, 3)
    r = await gw.chat(model=model)
    assert r.status_code == 200, r.text
    validate(r.json(), "CreateChatCompletionResponse")
    assert r.json()["model"] == model and saved.id not in r.text
    [load] = gw.fake.loads()
    assert load.body["lora_name"] == saved.id
    assert (Path(load.body["lora_path"]) / "adapter_model.safetensors").is_file()
    assert [s.body["model"] for s in gw.fake.completions()] == [saved.id]
    assert {(row.model, row.adapter_version_id) for row in await gw.rows()} == {(model, saved.id)}
    for unknown in (f"helper:{job.id}:ckpt-step-4", f"other:{job.id}:ckpt-step-3", "helper:ftjob-0:ckpt-step-3"):
        assert error_of(await gw.chat(model=unknown), 404)["code"] == "model_not_found"


async def test_deleted_version_is_unloaded_and_no_longer_served(gw: Gateway) -> None:
    gw.register_adapter("helper")
    v2 = gw.register_adapter("helper")
    gw.register_adapter("helper")  # v3 serves `helper`
    assert (await gw.chat(model="helper@v2")).status_code == 200
    assert v2 in gw.engine.resident and v2 in gw.fake.loras

    r = await gw.http.delete("/v1/models/helper@v2", headers=gw.auth)
    assert r.status_code == 200, r.text
    validate(r.json(), "DeleteModelResponse")
    assert v2 not in gw.engine.resident and v2 not in gw.fake.loras
    assert [s.body for s in gw.fake.seen if s.path == "/v1/unload_lora_adapter"] == [{"lora_name": v2}]

    err = error_of(await gw.chat(model="helper@v2"), 404)
    assert err["code"] == "model_not_found" and v2 not in err["message"]
    assert (await gw.chat(model="helper")).status_code == 200  # the alias serves on
    assert len(gw.fake.completions()) == 2


async def test_deleted_adapter_is_unloaded_with_every_version(gw: Gateway) -> None:
    v1 = gw.register_adapter("helper")
    v2 = gw.register_adapter("helper")
    assert (await gw.chat(model="helper@v1")).status_code == 200
    assert (await gw.chat(model="helper")).status_code == 200
    assert {v1, v2} <= set(gw.engine.resident)

    r = await gw.http.delete("/v1/adapters/helper", headers=gw.auth)
    assert r.status_code == 200, r.text
    assert not {v1, v2} & set(gw.engine.resident) and not {v1, v2} & set(gw.fake.loras)
    unloads = {s.body["lora_name"] for s in gw.fake.seen if s.path == "/v1/unload_lora_adapter"}
    assert unloads == {v1, v2}
    for model in ("helper", "helper@v1", "helper@v2"):
        assert error_of(await gw.chat(model=model), 404)["code"] == "model_not_found"


async def test_adapter_lost_by_engine_is_reloaded_and_retried(gw: Gateway) -> None:
    version_id = gw.register_adapter("helper")
    assert (await gw.chat(model="helper")).status_code == 200
    gw.fake.loras.clear()  # the engine restarted behind the gateway's back

    r = await gw.chat(model="helper")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "helper"
    assert len(gw.fake.loads()) == 2
    models = [s.body["model"] for s in gw.fake.completions()]
    assert models == [version_id] * 3  # ok, 404, retried ok

    gw.fake.loras.clear()
    r = await gw.chat(model="helper", stream=True)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(r) if c["choices"])
    assert len(gw.fake.loads()) == 3

    rows = await gw.rows()
    assert [row.status_code for row in rows] == [200, 200, 200]


async def test_adapter_404_twice_is_reported_with_the_public_name(gw: Gateway) -> None:
    version_id = gw.register_adapter("helper")
    not_found = raw_json("error_unknown_model_with_adapter")["body"]
    msg = {
        "error": {
            **not_found["error"],
            "message": f"The model `{version_id}` does not exist. Valid aliases: {BASE}, av-other-tenant.",
        }
    }
    gw.fake.script += [answer_with(404, msg), answer_with(404, msg)]
    r = await gw.chat(model="helper")
    err = error_of(r, 404)
    assert version_id not in r.text and "av-other-tenant" not in r.text
    assert "`helper`" in err["message"]
    assert len(gw.fake.completions()) == 2  # one retry, not a loop


async def test_adapter_engine_error_hides_the_internal_name(gw: Gateway) -> None:
    version_id = gw.register_adapter("helper")
    gw.fake.script.append(
        answer_with(
            400,
            {
                "error": {
                    "message": f"LoRA {version_id} rank too large",
                    "type": "BadRequestError",
                    "param": version_id,
                    "code": 400,
                }
            },
        )
    )
    r = await gw.chat(model="helper")
    err = error_of(r, 400)
    assert version_id not in r.text
    assert err["message"] == "LoRA helper rank too large"


@pytest.mark.parametrize(
    ("engine_status", "status"),
    [
        (500, 503),  # the engine failed: worth another try
        (400, 500),  # the engine refused this adapter: retrying will not help
    ],
)
async def test_adapter_load_refused_by_engine_is_told_in_tailors_words(
    gw: Gateway, engine_status: int, status: int
) -> None:
    version_id = gw.register_adapter("helper")
    # vLLM's own words name its internal adapter id and the file path on the engine host.
    gw.fake.load_error = (
        engine_status,
        f"Loading lora {version_id} failed: No adapter found for /srv/tailor/data/cache/adapters/{version_id}",
    )
    r = await gw.chat(model="helper")
    err = error_of(r, status)
    assert err["code"] == "model_load_failed"
    assert "'helper'" in err["message"]
    assert version_id not in r.text and "/srv/" not in r.text
    assert gw.fake.completions() == []
    [row] = await gw.rows()
    assert row.status_code == status and version_id not in (row.error or "")


async def test_concurrent_first_requests_share_one_load(gw: Gateway) -> None:
    version_id = gw.register_adapter("helper")
    rs = await asyncio.gather(*(gw.chat(model="helper", stream=i % 2 == 0) for i in range(6)))
    assert [r.status_code for r in rs] == [200] * 6
    assert [s.body["lora_name"] for s in gw.fake.loads()] == [version_id]


async def test_adapter_reload_failing_after_engine_restart(gw: Gateway) -> None:
    gw.register_adapter("helper")
    assert (await gw.chat(model="helper")).status_code == 200
    gw.fake.loras.clear()
    gw.fake.load_error = (500, "Internal Server Error")
    err = error_of(await gw.chat(model="helper"), 503)
    assert err["code"] == "model_load_failed"
    rows = await gw.rows()
    assert [row.status_code for row in rows] == [200, 503]


async def test_other_tenants_adapter_is_404(gw: Gateway) -> None:
    gw.register_adapter("helper")
    other = f"other{next(serial)}"
    r = await gw.http.post("/admin/tenants", json={"name": other}, headers=ADMIN)
    assert r.status_code == 201
    r = await gw.http.post(f"/admin/tenants/{other}/keys", json={}, headers=ADMIN)
    beta = {"authorization": f"Bearer {r.json()['key']}"}
    r = await gw.http.post("/v1/chat/completions", json={**CHAT, "model": "helper"}, headers=beta)
    error_of(r, 404, param="model")
    assert gw.fake.loads() == []


async def test_database_outage_serves_known_callers_and_loses_no_record(tmp_path: Path) -> None:
    """The database goes away (connection refused) for a while: requests of callers seen a
    moment ago are still served from the lookup caches, rate limits fail open, a never-seen
    key gets a 503 it can retry, and every interaction is written once the database is back."""
    from core.db import Database

    overrides = {"auth_cache_ttl_s": 0.05, "log_flush_interval_s": 0.05, "db_outage_grace_s": 60.0}
    async with running_gateway(tmp_path, **overrides) as run:
        views = tenant_view(run, tmp_path)
        gw = await views.__anext__()
        name = (await gw.http.get("/v1/limits", headers=gw.auth)).json()["tenant"]
        r = await gw.http.put(f"/admin/tenants/{name}/limits", json={"requests_per_minute": 1000}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert (await gw.chat()).status_code == 200  # key, limits and model now known

        services, healthy = run.services, run.services.db
        down = Database("postgresql+psycopg://tailor:x@127.0.0.1:9/tailor?connect_timeout=1")
        services.db = services.interactions.db = services.meter.db = down
        try:
            await asyncio.sleep(0.1)  # past the cache TTL: every lookup asks the database
            served = [await gw.chat(stream=i % 2 == 0) for i in range(4)]
            assert [r.status_code for r in served] == [200] * 4
            unknown = await gw.http.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer tk-x"})
            assert error_of(unknown, 503)["code"] == "database_unavailable"
            await asyncio.sleep(0.5)
            assert services.interactions.write_errors > 0  # it tried, and keeps trying
            metrics = (await gw.http.get("/metrics")).text
            assert 'tailor_database_unavailable_total{outcome="stale",what="key"}' in metrics
            assert 'tailor_database_unavailable_total{outcome="open",what="limits"}' in metrics
        finally:
            services.db = services.interactions.db = services.meter.db = healthy
            down.dispose()
        await asyncio.wait_for(services.interactions.flush(), timeout=30)
        rows = await gw.rows()
        assert [row.status_code for row in rows] == [200] * 5
        assert services.interactions.dropped == 0
        with contextlib.suppress(StopAsyncIteration):
            await views.__anext__()


async def test_output_token_cap(gw: Gateway) -> None:
    cap = gw.services.settings.max_output_tokens
    err = error_of(await gw.chat(max_tokens=cap + 1), 400, param="max_tokens")
    assert f"at most {cap}" in err["message"]
    error_of(await gw.chat(max_completion_tokens=cap + 1), 400, param="max_completion_tokens")
    assert gw.fake.completions() == []  # refused before the engine
    assert (await gw.chat(max_tokens=cap)).status_code == 200
    assert [row.status_code for row in await gw.rows()] == [400, 400, 200]


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
