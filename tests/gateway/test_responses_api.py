"""The Responses API through the real app and a fake vLLM (tests/gateway/gateway_world.py):
create (plain and streamed), retrieve, delete, input items, previous_response_id chains, tenant
isolation, redaction, retention, feedback by response id, and the official SDK. Refusals and
failures mid-stream: test_responses_refusals_api.py. Every body, event and error is checked
against OpenAI's schema.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core.ids import utcnow
from core.models import Feedback, Interaction, StoredResponse
from gateway import privacy
from gateway.proxy import INTERACTION_HEADER
from tests.gateway.gateway_world import ADMIN, BASE, Gateway, raw_sse, stream_of
from tests.gateway.module_gateway import module_gateway
from tests.gateway.responses_world import ANSWER, QUESTION, create, get, output_text, post, refused, sent, stream_events
from tests.openai_schema import RESPONSE_DELETED, validate
from trainer.datasets import prompt_from_request

pytestmark = pytest.mark.asyncio(loop_scope="module")

shared = module_gateway("responses")


# --------------------------------------------------------------------------- create, retrieve


async def test_a_response_is_answered_stored_and_read_back(gw: Gateway) -> None:
    made = await create(gw, max_output_tokens=16, temperature=0, metadata={"task": "geo"})
    assert made["id"].startswith("resp_") and made["object"] == "response" and made["model"] == BASE
    assert made["status"] == "completed" and made["error"] is None and made["incomplete_details"] is None
    assert output_text(made) == ANSWER and made["output"][0]["id"].startswith("msg_")
    assert made["usage"]["input_tokens"] > 0 and made["usage"]["output_tokens"] > 0
    assert made["usage"]["total_tokens"] == made["usage"]["input_tokens"] + made["usage"]["output_tokens"]
    assert (made["temperature"], made["max_output_tokens"], made["metadata"]) == (0, 16, {"task": "geo"})
    assert made["store"] is True and made["tools"] == [] and made["previous_response_id"] is None
    # The engine got a chat request, with nothing of the Responses fields it does not know.
    assert sent(gw) == {
        "model": BASE,
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": False,
        "max_tokens": 16,
        "temperature": 0,
        "cache_salt": sent(gw)["cache_salt"],
    }
    # Stored before it was answered: no wait for the interaction log.
    assert await get(gw, made["id"]) == made
    [row] = await gw.rows()
    assert (row.id, row.endpoint, row.status_code, row.response_text) == (made["id"], "responses", 200, ANSWER)
    assert row.request["messages"] == [{"role": "user", "content": QUESTION}]
    assert row.prompt_tokens == made["usage"]["input_tokens"]


async def test_a_streamed_response_is_the_responses_event_sequence(gw: Gateway) -> None:
    async with gw.http.stream(
        "POST", "/v1/responses", json={"model": BASE, "input": QUESTION, "stream": True}, headers=gw.auth
    ) as r:
        await r.aread()
    events = stream_events(r)
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 3
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    rid = events[0]["response"]["id"]
    assert r.headers[INTERACTION_HEADER] == rid and events[0]["response"]["status"] == "in_progress"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == ANSWER == events[-4]["text"] == events[-3]["part"]["text"]
    done = events[-1]["response"]
    assert done["id"] == rid and output_text(done) == ANSWER and done["usage"]["output_tokens"] > 0
    assert {e["item_id"] for e in events if "item_id" in e} == {done["output"][0]["id"]}
    assert sent(gw)["stream"] is True and sent(gw)["stream_options"] == {"include_usage": True}
    assert await get(gw, rid) == done  # stored before response.completed went out
    [row] = await gw.rows()
    assert row.id == rid and row.stream and row.response_text == ANSWER


async def test_the_token_budget_running_out_makes_it_incomplete(gw: Gateway) -> None:
    answer = raw_sse("chat_stream_usage").replace('"finish_reason":"stop"', '"finish_reason":"length"')
    assert answer != raw_sse("chat_stream_usage")
    gw.fake.script.append(stream_of(answer.encode()))
    r = await post(gw, input=QUESTION, stream=True, max_output_tokens=16)
    events = stream_events(r)
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["status"] == "incomplete" and final["response"]["completed_at"] is None
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"


async def test_instructions_and_input_items_become_chat_messages(gw: Gateway) -> None:
    made = await create(
        gw,
        instructions="Answer in one word.",
        input=[
            {"role": "developer", "content": "Be kind."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi."}]},
            {"role": "assistant", "content": "Hello!"},
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "Capital"}, {"type": "input_text", "text": "of France?"}],
            },
        ],
    )
    assert made["instructions"] == "Answer in one word."
    assert sent(gw)["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital\nof France?"},
    ]
    items = (await get(gw, f"{made['id']}/input_items", order="asc"))["data"]
    assert [(i["role"], i["content"][0]["type"]) for i in items] == [
        ("developer", "input_text"),
        ("user", "input_text"),
        ("assistant", "output_text"),
        ("user", "input_text"),
    ]


async def test_json_schema_text_format_reaches_the_engine_and_is_echoed(gw: Gateway) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "name": "city", "schema": schema, "strict": True}
    made = await create(gw, text={"format": fmt})
    assert made["text"] == {"format": fmt}
    assert sent(gw)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": schema, "strict": True},
    }
    await create(gw, text={"format": {"type": "json_object"}})
    assert sent(gw)["response_format"] == {"type": "json_object"}


async def test_an_adapter_is_chosen_by_model_name(gw: Gateway) -> None:
    gw.register_adapter("helper")
    made = await create(gw, model="helper")
    assert made["model"] == "helper" and output_text(made) == ANSWER
    engine_name = sent(gw)["model"]
    assert engine_name != "helper" and engine_name in gw.fake.loras  # the tenant's LoRA, by its internal name
    assert (await get(gw, made["id"]))["model"] == "helper"


# --------------------------------------------------------------------------- conversations


async def test_previous_response_id_continues_the_conversation(gw: Gateway) -> None:
    first = await create(gw, input="My name is Ann.", instructions="Old instructions.")
    second = await create(gw, input="What is my name?", previous_response_id=first["id"], instructions="Be brief.")
    assert second["previous_response_id"] == first["id"]
    # The earlier turn whole; its instructions are not carried over.
    assert sent(gw)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Ann."},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "What is my name?"},
    ]
    third = await create(gw, input="And again?", previous_response_id=second["id"])
    assert [m["content"] for m in sent(gw)["messages"]] == [
        "My name is Ann.",
        ANSWER,
        "What is my name?",
        ANSWER,
        "And again?",
    ]
    # The log keeps the whole conversation the engine saw: feedback on it trains on that prompt.
    row = next(r for r in await gw.rows() if r.id == third["id"])
    assert prompt_from_request(row.endpoint, row.request) == tuple(sent(gw)["messages"])

    listed = await get(gw, f"{third['id']}/input_items")  # newest first by default
    texts = [i["content"][0]["text"] for i in listed["data"]]
    assert texts == ["And again?", ANSWER, "What is my name?", ANSWER, "My name is Ann."]
    assert listed["first_id"] == listed["data"][0]["id"] and listed["has_more"] is False
    page = await get(gw, f"{third['id']}/input_items", limit=2, order="asc")
    assert [i["content"][0]["text"] for i in page["data"]] == ["My name is Ann.", ANSWER] and page["has_more"]
    rest = await get(gw, f"{third['id']}/input_items", limit=10, order="asc", after=page["last_id"])
    assert [i["content"][0]["text"] for i in rest["data"]] == texts[::-1][2:]


async def test_unstored_responses_are_answered_but_not_kept(gw: Gateway) -> None:
    made = await create(gw, store=False)
    assert made["store"] is False and output_text(made) == ANSWER
    await get(gw, made["id"], 404)
    r = await post(gw, input="Next?", previous_response_id=made["id"])
    refused(r, 400, "previous_response_id")
    with gw.services.db.session() as s:
        assert s.scalar(select(StoredResponse).where(StoredResponse.tenant_id == gw.tenant_id)) is None


async def test_delete_removes_a_turn_and_what_continues_it_forgets_it(gw: Gateway) -> None:
    first = await create(gw, input="My name is Ann.")
    second = await create(gw, input="What is my name?", previous_response_id=first["id"])
    r = await gw.http.post("/v1/feedback", json={"interaction_id": first["id"], "rating": "good"}, headers=gw.auth)
    assert r.status_code == 201, r.text
    r = await gw.http.delete(f"/v1/responses/{first['id']}", headers=gw.auth)
    assert r.status_code == 200, r.text
    validate(r.json(), RESPONSE_DELETED)
    assert r.json() == {"id": first["id"], "object": "response", "deleted": True}
    await get(gw, first["id"], 404)
    await get(gw, f"{first['id']}/input_items", 404)
    assert (await gw.http.delete(f"/v1/responses/{first['id']}", headers=gw.auth)).status_code == 404
    with gw.services.db.session() as s:
        row = s.get(Interaction, first["id"])
        assert row is not None and row.request == {} and row.response_text is None and row.prompt_tokens
        assert s.scalar(select(Feedback).where(Feedback.interaction_id == first["id"])) is None
    # The later turn stays; its past no longer holds the deleted one.
    assert (await get(gw, second["id"]))["id"] == second["id"]
    assert [i["content"][0]["text"] for i in (await get(gw, f"{second['id']}/input_items"))["data"]] == [
        "What is my name?"
    ]
    await create(gw, input="Again?", previous_response_id=second["id"])
    assert [m["content"] for m in sent(gw)["messages"]] == ["What is my name?", ANSWER, "Again?"]


# --------------------------------------------------------------------------- tenants, privacy


async def test_another_tenant_can_neither_see_nor_continue_nor_rate_a_response(gw: Gateway, other: Gateway) -> None:
    made = await create(gw)
    await get(other, made["id"], 404)
    await get(other, f"{made['id']}/input_items", 404)
    r = await other.http.delete(f"/v1/responses/{made['id']}", headers=other.auth)
    refused(r, 404, "response_id")
    r = await post(other, input="Continue.", previous_response_id=made["id"])
    assert refused(r, 400, "previous_response_id")["code"] == "previous_response_not_found"
    r = await other.http.post("/v1/feedback", json={"interaction_id": made["id"], "rating": "bad"}, headers=other.auth)
    refused(r, 404, "interaction_id")
    assert await get(gw, made["id"]) == made  # untouched


async def test_feedback_names_a_response_by_its_id(gw: Gateway) -> None:
    made = await create(gw)
    r = await gw.http.post("/v1/feedback", json={"interaction_id": made["id"], "correction": "Paris."}, headers=gw.auth)
    assert r.status_code == 201, r.text
    assert r.json()["interaction_id"] == made["id"] and r.json()["model"] == BASE


async def test_a_redacting_tenant_stores_redacted_turns_and_continues_from_them(gw: Gateway) -> None:
    r = await gw.http.put(f"/admin/tenants/{gw.tenant_id}/privacy", json={"redact_pii": True}, headers=ADMIN)
    assert r.status_code == 200, r.text
    made = await create(gw, input="Mail me at ann@example.com", metadata={"who": "ann@example.com"})
    assert sent(gw)["messages"][-1]["content"] == "Mail me at ann@example.com"  # the engine sees it as sent
    stored = await get(gw, made["id"])
    assert stored["metadata"] == {"who": "[EMAIL]"}
    items = await get(gw, f"{made['id']}/input_items")
    assert items["data"][0]["content"][0]["text"] == "Mail me at [EMAIL]"
    await create(gw, input="Done?", previous_response_id=made["id"])
    assert sent(gw)["messages"][0]["content"] == "Mail me at [EMAIL]"


async def test_expired_responses_are_gone(gw: Gateway) -> None:
    made = await create(gw)
    r = await gw.http.put(f"/admin/tenants/{gw.tenant_id}/privacy", json={"retention_days": 7}, headers=ADMIN)
    assert r.status_code == 200, r.text
    with gw.services.db.session() as s:
        s.execute(
            update(StoredResponse)
            .where(StoredResponse.id == made["id"])
            .values(created_at=utcnow() - timedelta(days=8))
        )
    await get(gw, made["id"], 404)
    await get(gw, f"{made['id']}/input_items", 404)
    refused(await post(gw, input="More.", previous_response_id=made["id"]), 400, "previous_response_id")
    assert privacy.apply_retention(gw.services.db).by_tenant[gw.tenant_id]["responses"] == 1


# --------------------------------------------------------------------------- the official SDK


async def test_the_official_sdk_reads_every_answer(gw: Gateway) -> None:
    import openai

    key = gw.auth["authorization"].removeprefix("Bearer ")
    client = openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key=key, http_client=gw.http, max_retries=0)
    first = await client.responses.create(model=BASE, input=QUESTION, max_output_tokens=16, metadata={"k": "v"})
    assert first.output_text == ANSWER and first.status == "completed" and first.metadata == {"k": "v"}
    async with await client.responses.create(
        model=BASE, input="Again?", previous_response_id=first.id, stream=True
    ) as stream:
        events = [event async for event in stream]
    assert events[-1].type == "response.completed" and events[-1].response.output_text == ANSWER
    second = events[-1].response
    assert (await client.responses.retrieve(second.id)).output_text == ANSWER
    items = [item async for item in client.responses.input_items.list(second.id, order="asc", limit=1)]
    assert [item.type for item in items] == ["message"] * 3  # paged one at a time by the SDK
    await client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model=BASE, input=QUESTION, tools=[{"type": "web_search"}])
    assert err.value.body["param"] == "tools"  # type: ignore[index]
