"""The stored completions API through the real app and a fake vLLM (tests/gateway/gateway_world.py):
`store: true` on create, list / retrieve / messages / update / delete, the training file
route, metadata validation, tenant isolation, redaction and retention. Every body is checked
against OpenAI's schema."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from core.ids import utcnow
from tests.dbutil import add_interaction
from tests.gateway.gateway_world import (
    ADMIN,
    BASE,
    CHAT,
    Gateway,
    answer_with,
    raw_json,
)
from tests.gateway.module_gateway import module_gateway
from tests.openai_schema import STORED_MESSAGE_LIST, validate

pytestmark = pytest.mark.asyncio(loop_scope="module")

ANSWER = "The capital of France is Paris."  # the fake engine's answer (tests/fixtures/vllm_raw)
TASK = {"task": "geo", "run": "7"}


shared = module_gateway("stored")


async def store(gw: Gateway, **overrides: Any) -> dict[str, Any]:
    """Create a stored chat completion; returns the body the client got (log written)."""
    r = await gw.chat(store=True, **overrides)
    assert r.status_code == 200, r.text
    await gw.services.interactions.flush()
    return r.json()  # type: ignore[no-any-return]


async def get(gw: Gateway, path: str, status: int = 200, **params: Any) -> dict[str, Any]:
    r = await gw.http.get(f"/v1/chat/completions{path}", params=params, headers=gw.auth)
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    validate(body, "ErrorResponse" if status >= 400 else _schema(path))
    return body


def _schema(path: str) -> str:
    if path.endswith("/messages"):
        return STORED_MESSAGE_LIST
    return "CreateChatCompletionResponse" if path else "ChatCompletionList"


async def test_a_stored_completion_reads_back_as_it_was_answered(gw: Gateway) -> None:
    made = await store(gw, metadata=TASK, temperature=0)
    got = await get(gw, f"/{made['id']}")
    assert got["id"] == made["id"] and got["object"] == "chat.completion" and got["model"] == BASE
    assert got["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": ANSWER, "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert got["usage"] == made["usage"] and got["metadata"] == TASK
    assert abs(got["created"] - utcnow().timestamp()) < 60  # when the gateway took the request
    # store and metadata are Tailor's: the engine never saw them.
    sent = gw.fake.completions()[-1].body
    assert "store" not in sent and "metadata" not in sent and sent["temperature"] == 0


async def test_a_streamed_stored_completion_is_stored_whole(gw: Gateway) -> None:
    async with gw.http.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True, "store": True}, headers=gw.auth
    ) as r:
        assert r.status_code == 200
        cid = r.headers["x-tailor-interaction-id"]
        chunks = [json.loads(line[6:]) async for line in r.aiter_lines() if line.startswith("data: {")]
    await gw.services.interactions.flush()
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    got = await get(gw, f"/{cid}")
    assert got["choices"][0]["message"]["content"] == text == ANSWER
    assert got["choices"][0]["finish_reason"] == "stop" and got["usage"]["completion_tokens"] > 0


async def test_only_completions_created_with_store_are_served(gw: Gateway) -> None:
    r = await gw.chat(metadata=TASK)  # metadata alone does not store
    assert r.status_code == 200
    r2 = await gw.chat(store=False)
    await gw.services.interactions.flush()
    for cid in (r.json()["id"], r2.json()["id"]):
        await get(gw, f"/{cid}", 404)
    assert (await get(gw, ""))["data"] == []
    assert (await get(gw, ""))["first_id"] == ""


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ({"k" * 65: "v"}, "metadata"),
        ({"k": "v" * 513}, "metadata"),
        ({"k": 1}, "metadata.k"),
        (["k", "v"], "metadata"),
    ],
)
async def test_bad_metadata_is_a_400_naming_it(gw: Gateway, metadata: Any, param: str) -> None:
    r = await gw.chat(store=True, metadata=metadata)
    assert r.status_code == 400, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param
    cid = (await store(gw))["id"]
    r = await gw.http.post(f"/v1/chat/completions/{cid}", json={"metadata": metadata}, headers=gw.auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert (await get(gw, f"/{cid}"))["metadata"] == {}  # nothing stored changed


async def test_the_limits_of_metadata_are_accepted(gw: Gateway) -> None:
    edge = {"k" * 63 + str(i): "v" * 512 for i in range(10)} | {f"s{i}": "" for i in range(6)}
    made = await store(gw, metadata=edge)
    assert (await get(gw, f"/{made['id']}"))["metadata"] == edge


async def test_store_with_several_choices_is_refused(gw: Gateway) -> None:
    r = await gw.chat(store=True, n=2)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
    assert gw.fake.completions() == []


async def test_list_filters_and_pages(gw: Gateway) -> None:
    geo = [(await store(gw, metadata=TASK))["id"] for _ in range(3)]
    await store(gw, metadata={"task": "math"})
    await store(gw)
    page = await get(gw, "", **{"metadata[task]": "geo", "metadata[run]": "7", "limit": 2})
    assert [c["id"] for c in page["data"]] == geo[:2] and page["has_more"]
    assert (page["first_id"], page["last_id"]) == (geo[0], geo[1])
    page = await get(gw, "", **{"metadata[task]": "geo", "after": page["last_id"]})
    assert [c["id"] for c in page["data"]] == geo[2:] and not page["has_more"]
    page = await get(gw, "", **{"metadata[task]": "geo", "order": "desc"})
    assert [c["id"] for c in page["data"]] == list(reversed(geo))
    assert len((await get(gw, "", model=BASE))["data"]) == 5
    assert (await get(gw, "", model="someone-else"))["data"] == []
    for params, param in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "up"}, "order")):
        assert (await get(gw, "", 400, **params))["error"]["param"] == param
    assert (await get(gw, "", 400, after="chatcmpl-unknown"))["error"]["param"] == "after"
    too_many = {f"metadata[k{i}]": "v" for i in range(17)}
    assert (await get(gw, "", 400, **too_many))["error"]["param"] == "metadata"


async def test_messages_update_and_delete(gw: Gateway) -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of"}, {"type": "text", "text": "France?"}]},
    ]
    cid = (await store(gw, messages=messages, metadata=TASK))["id"]
    listed = await get(gw, f"/{cid}/messages")
    assert [(m["id"], m["role"], m["content"]) for m in listed["data"]] == [
        (f"{cid}-0", "system", "Answer briefly."),
        (f"{cid}-1", "user", "Capital of\nFrance?"),
    ]
    assert listed["data"][0]["content_parts"] is None and listed["data"][1]["content_parts"] == messages[1]["content"]
    page = await get(gw, f"/{cid}/messages", limit=1, order="desc")
    assert [m["id"] for m in page["data"]] == [f"{cid}-1"] and page["has_more"]
    page = await get(gw, f"/{cid}/messages", limit=1, order="desc", after=f"{cid}-1")
    assert [m["id"] for m in page["data"]] == [f"{cid}-0"] and not page["has_more"]

    r = await gw.http.post(f"/v1/chat/completions/{cid}", json={"metadata": {"task": "checked"}}, headers=gw.auth)
    assert r.status_code == 200, r.text
    validate(r.json(), "CreateChatCompletionResponse")
    assert r.json()["metadata"] == {"task": "checked"}
    assert [c["id"] for c in (await get(gw, "", **{"metadata[task]": "checked"}))["data"]] == [cid]
    r = await gw.http.post(f"/v1/chat/completions/{cid}", json={"metadata": {}, "store": False}, headers=gw.auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "store"

    r = await gw.http.post("/v1/feedback", json={"interaction_id": cid, "rating": "good"}, headers=gw.auth)
    assert r.status_code == 201, r.text
    r = await gw.http.delete(f"/v1/chat/completions/{cid}", headers=gw.auth)
    assert r.status_code == 200, r.text
    validate(r.json(), "ChatCompletionDeleted")
    assert r.json() == {"object": "chat.completion.deleted", "id": cid, "deleted": True}
    for path in (f"/{cid}", f"/{cid}/messages"):
        await get(gw, path, 404)
    assert (await gw.http.delete(f"/v1/chat/completions/{cid}", headers=gw.auth)).status_code == 404
    assert (await gw.http.get("/v1/feedback", headers=gw.auth)).json()["data"] == []


async def test_another_tenants_ids_are_unknown(gw: Gateway, other: Gateway) -> None:
    cid = (await store(gw, metadata=TASK))["id"]
    for path in (f"/{cid}", f"/{cid}/messages"):
        body = await get(other, path, 404)
        assert body["error"]["code"] == "completion_not_found"
    r = await other.http.post(f"/v1/chat/completions/{cid}", json={"metadata": {"mine": "1"}}, headers=other.auth)
    assert r.status_code == 404
    assert (await other.http.delete(f"/v1/chat/completions/{cid}", headers=other.auth)).status_code == 404
    assert (await get(other, ""))["data"] == []
    assert (await get(other, "", 400, after=cid))["error"]["param"] == "after"
    r = await other.http.post("/v1/files/from_stored_completions", json={"metadata": TASK}, headers=other.auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_examples"
    got = await get(gw, f"/{cid}")  # untouched by all of the above
    assert got["metadata"] == TASK
    assert (await gw.http.get("/v1/chat/completions")).status_code == 401


async def test_redacting_tenants_get_back_what_was_stored(gw: Gateway) -> None:
    r = await gw.http.put(f"/admin/tenants/{gw.tenant_id}/privacy", json={"redact_pii": True}, headers=ADMIN)
    assert r.status_code == 200, r.text
    gw.fake.replace_text = ("Paris.", "Paris. Write to info@paris.fr.")
    ask = [{"role": "user", "content": "I am ann@example.com. Capital of France?"}]
    cid = (await store(gw, messages=ask, metadata={"owner": "ann@example.com"}))["id"]
    got = await get(gw, f"/{cid}")
    assert got["choices"][0]["message"]["content"] == "The capital of France is Paris. Write to [EMAIL]."
    assert got["metadata"] == {"owner": "[EMAIL]"}
    listed = await get(gw, f"/{cid}/messages")
    assert listed["data"][0]["content"] == "I am [EMAIL]. Capital of France?"


async def test_expired_completions_are_gone(gw: Gateway) -> None:
    old = add_interaction(
        gw.services.db,
        gw.tenant_id,
        model=BASE,
        request={"messages": CHAT["messages"]},
        response_text=ANSWER,
        finish_reason="stop",
        stored=True,
        created_at=utcnow() - timedelta(days=3),
    )
    assert (await get(gw, f"/{old}"))["id"] == old
    r = await gw.http.put(f"/admin/tenants/{gw.tenant_id}/privacy", json={"retention_days": 2}, headers=ADMIN)
    assert r.status_code == 200, r.text
    await get(gw, f"/{old}", 404)
    assert (await get(gw, ""))["data"] == []


async def test_training_file_and_a_job_on_it(gw: Gateway) -> None:
    for _ in range(3):
        await store(gw, metadata=TASK)
    cut = raw_json("chat")["body"]
    cut["choices"][0]["finish_reason"] = "length"
    gw.fake.script.append(answer_with(200, cut))
    await store(gw, metadata=TASK, max_tokens=3)  # cut off: no example
    await store(gw, metadata={"task": "math"})
    body = {"model": BASE, "metadata": TASK, "filename": "geo.jsonl"}
    r = await gw.http.post("/v1/files/from_stored_completions", json=body, headers=gw.auth)
    assert r.status_code == 200, r.text
    made = r.json()
    validate({k: v for k, v in made.items() if k not in ("examples", "skipped")}, "OpenAIFile")
    assert (made["purpose"], made["filename"], made["examples"], made["skipped"]) == ("fine-tune", "geo.jsonl", 3, 1)
    content = await gw.http.get(f"/v1/files/{made['id']}/content", headers=gw.auth)
    lines = [json.loads(line) for line in content.text.splitlines()]
    assert lines == 3 * [{"messages": [*CHAT["messages"], {"role": "assistant", "content": ANSWER}]}]
    job = {"model": BASE, "training_file": made["id"], "suffix": "student"}
    r = await gw.http.post("/v1/fine_tuning/jobs", json=job, headers=gw.auth)
    assert r.status_code == 200, r.text
    validate(r.json(), "FineTuningJob")
    for bad, param in (({"metadata": {"k" * 65: "v"}}, "metadata"), ({"purpose": "x"}, "purpose")):
        r = await gw.http.post("/v1/files/from_stored_completions", json=bad, headers=gw.auth)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
