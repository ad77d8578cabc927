"""The Responses API through the real app and a fake vLLM (see test_responses_api.py): what it
refuses, with the field named, and failures mid-stream or while storing. Every body, event and
error is checked against OpenAI's schema.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from core.models import StoredResponse
from gateway.proxy import INTERACTION_HEADER
from gateway.responses import store
from tests.gateway.gateway_world import Gateway, raw_sse, stream_of
from tests.gateway.module_gateway import module_gateway
from tests.gateway.responses_world import QUESTION, create, get, post, refused, stream_events

pytestmark = pytest.mark.asyncio(loop_scope="module")

shared = module_gateway("responses")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": QUESTION, "model": ""}, "model"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": []}]}, "input[0].content"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://10.0.0.1/x.png"}]}]},
            "input[0].content[0]",
        ),
        ({"input": ["just a string"]}, "input[0]"),
        ({"input": QUESTION, "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": QUESTION, "tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"input": QUESTION, "tool_choice": "required"}, "tool_choice"),
        ({"input": QUESTION, "background": True}, "background"),
        ({"input": QUESTION, "include": ["message.output_text.logprobs"]}, "include"),
        ({"input": QUESTION, "truncation": "auto"}, "truncation"),
        ({"input": QUESTION, "top_logprobs": 3}, "top_logprobs"),
        ({"input": QUESTION, "conversation": "conv_1"}, "conversation"),
        ({"input": QUESTION, "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": QUESTION, "max_output_tokens": 8}, "max_output_tokens"),
        ({"input": QUESTION, "max_output_tokens": 10**9}, "max_output_tokens"),
        ({"input": QUESTION, "temperature": 3}, "temperature"),
        ({"input": QUESTION, "top_p": 0}, "top_p"),
        ({"input": QUESTION, "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
        ({"input": QUESTION, "text": {"format": {"type": "text", "name": "x"}}}, "text.format"),
        ({"input": QUESTION, "metadata": {"k": "v" * 513}}, "metadata"),
        ({"input": QUESTION, "previous_response_id": "resp_nope"}, "previous_response_id"),
        ({"input": QUESTION, "seed": 1}, "seed"),
        ({"input": QUESTION, "messages": [{"role": "user", "content": "x"}]}, "messages"),
    ],
)
async def test_what_cannot_be_served_is_a_400_naming_the_field(gw: Gateway, body: dict[str, Any], param: str) -> None:
    r = await post(gw, **body)
    refused(r, 400, param)
    assert gw.fake.completions() == []  # nothing reached the engine
    with gw.services.db.session() as s:
        assert s.scalar(select(StoredResponse).where(StoredResponse.tenant_id == gw.tenant_id)) is None


async def test_retrieval_options_that_are_not_offered_are_400s(gw: Gateway) -> None:
    made = await create(gw)
    refused(await gw.http.get(f"/v1/responses/{made['id']}", params={"stream": "true"}, headers=gw.auth), 400, "stream")
    for path in (made["id"], f"{made['id']}/input_items"):
        r = await gw.http.get(f"/v1/responses/{path}", params={"include": "file_search_call.results"}, headers=gw.auth)
        refused(r, 400, "include")
    await get(gw, f"{made['id']}/input_items", 400, limit=0)
    await get(gw, f"{made['id']}/input_items", 400, after="msg_unknown")
    await get(gw, "resp_" + "x" * 300, 404)


async def test_an_unknown_model_is_a_logged_404(gw: Gateway) -> None:
    r = await post(gw, input=QUESTION, model="no-such-model")
    assert refused(r, 404, "model")["code"] == "model_not_found"
    rid = r.headers[INTERACTION_HEADER]
    [row] = await gw.rows()
    assert (row.id, row.endpoint, row.status_code) == (rid, "responses", 404)
    await get(gw, rid, 404)


# --------------------------------------------------------------------------- failures


async def test_an_engine_failing_mid_stream_ends_with_error_and_response_failed(gw: Gateway) -> None:
    gw.fake.script.append(stream_of(raw_sse("chat_stream_midstream_error").encode()))
    r = await post(gw, input=QUESTION, stream=True)
    assert r.status_code == 200
    events = stream_events(r)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["message"] == "Internal server error"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {
        "code": "server_error",
        "message": "Internal server error",
    }
    await get(gw, failed["id"], 404)  # a failed answer is not stored
    [row] = await gw.rows()
    assert row.status_code == 502 and row.response_text == "The capital"


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (RuntimeError("bug"), 500, "internal_error"),
        (OperationalError("INSERT", {}, Exception("connection refused")), 503, "database_unavailable"),
    ],
)
async def test_a_response_that_cannot_be_stored_is_a_failure_not_a_silent_loss(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, failure: Exception, status: int, code: str
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise failure

    monkeypatch.setattr(store, "save", broken)
    r = await post(gw, input=QUESTION)
    assert refused(r, status, None)["code"] == code
    r = await post(gw, input=QUESTION, stream=True)
    events = stream_events(r)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == code and "response.completed" not in [e["type"] for e in events]
    rows = await gw.rows()
    assert [row.status_code for row in rows] == [status, status]
    # Not storing works as before.
    assert (await create(gw, store=False))["status"] == "completed"
