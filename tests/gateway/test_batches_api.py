"""The Batch API through the real app and a fake vLLM (tests/gateway/gateway_world.py): batch files,
creating, running (every line on the live path), output and error files, priority, yielding to
interactive requests, usage, refusals and tenant isolation. Stopping, expiry, retries and the
app's own runner: test_batches_stopping.py. Every body, output line and error is checked against
OpenAI's schema.

Batches are run here by runners the tests drive (`BatchRunner.run` on a claimed batch); the
shared app runs none of its own (`run_batches=False`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from tests.gateway.batch_world import (
    ANSWER,
    CHAT_URL,
    COMPLETIONS_URL,
    RESPONSES_URL,
    batch_gateway,
    chat_answer,
    chat_line,
    content,
    create,
    get,
    jsonl,
    post_batch,
    refused,
    run,
    until,
    upload,
    uploaded,
)
from tests.gateway.gateway_world import ADMIN, BASE, Gateway, answer_with, raw_json
from tests.openai_schema import validate

pytestmark = pytest.mark.asyncio(loop_scope="module")

shared = batch_gateway()


# --------------------------------------------------------------------------- running


async def test_a_chat_batch_runs_every_line_on_the_live_path(gw: Gateway) -> None:
    lines = [
        chat_line("first", store=True),
        chat_line("streamed", stream=True),
        chat_line("too-hot", temperature=9),
        chat_line("last", "Say hi."),
    ]
    batch = await create(gw, lines, metadata={"run": "nightly"})
    assert batch["model"] == BASE and batch["metadata"] == {"run": "nightly"}
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600 and batch["endpoint"] == CHAT_URL

    ended = await run(gw, batch["id"])
    assert ended is not None and ended.status == "completed"
    got = await get(gw, batch["id"])
    assert got["status"] == "completed" and got["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert got["created_at"] <= got["in_progress_at"] <= got["finalizing_at"] <= got["completed_at"]

    outputs = await content(gw, got["output_file_id"])
    assert [o["custom_id"] for o in outputs] == ["first", "last"]
    for out in outputs:
        assert out["error"] is None and out["response"]["status_code"] == 200
        body = out["response"]["body"]
        validate(body, "CreateChatCompletionResponse")
        assert body["choices"][0]["message"]["content"] == ANSWER
        assert out["response"]["request_id"] == body["id"]
    errors = await content(gw, got["error_file_id"])
    assert [e["custom_id"] for e in errors] == ["streamed", "too-hot"]
    for err, param in zip(errors, ("stream", "temperature"), strict=True):
        assert err["error"] is None and err["response"]["status_code"] == 400
        validate(err["response"]["body"], "ErrorResponse")
        assert err["response"]["body"]["error"]["param"] == param

    # Only the two good lines reached the engine, as the tenant, each logged like a live call
    # (the stored one is a stored completion like any other).
    assert len(gw.fake.completions()) == 2
    by_id = {row.id: row for row in await gw.rows()}
    first, last = (by_id[o["response"]["request_id"]] for o in outputs)
    assert (first.endpoint, first.status_code, first.response_text, first.stored) == (
        "chat.completions",
        200,
        ANSWER,
        True,
    )
    assert last.request["messages"][0]["content"] == "Say hi." and not last.stored
    listed = (await gw.http.get("/v1/files", params={"purpose": "batch_output"}, headers=gw.auth)).json()
    validate(listed, "ListFilesResponse")
    assert {f["id"] for f in listed["data"]} == {got["output_file_id"], got["error_file_id"]}
    assert {f["filename"] for f in listed["data"]} == {f"{batch['id']}_output.jsonl", f"{batch['id']}_error.jsonl"}


async def test_answers_are_stored_redacted_for_a_tenant_that_redacts(gw: Gateway) -> None:
    r = await gw.http.put(f"/admin/tenants/{gw.tenant_id}/privacy", json={"redact_pii": True}, headers=ADMIN)
    assert r.status_code == 200, r.text
    gw.fake.replace_text = ("Paris.", "Paris. Write to mayor@paris.example.org.")
    batch = await create(gw, [chat_line("a")])
    await run(gw, batch["id"])
    (out,) = await content(gw, (await get(gw, batch["id"]))["output_file_id"])
    body = out["response"]["body"]
    validate(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["message"]["content"] == "The capital of France is Paris. Write to [EMAIL]."
    assert body["id"] == out["response"]["request_id"] and body["model"] == BASE  # structure kept


async def test_completions_and_responses_batches(gw: Gateway) -> None:
    text = [
        {"custom_id": "t1", "method": "POST", "url": COMPLETIONS_URL, "body": {"model": BASE, "prompt": "Paris is"}},
    ]
    batch = await create(gw, text, COMPLETIONS_URL)
    await run(gw, batch["id"])
    (out,) = await content(gw, (await get(gw, batch["id"]))["output_file_id"])
    validate(out["response"]["body"], "CreateCompletionResponse")

    asked = [
        {"custom_id": "r1", "method": "POST", "url": RESPONSES_URL, "body": {"model": BASE, "input": "Capital?"}},
        {"custom_id": "r2", "method": "POST", "url": RESPONSES_URL, "body": {"model": BASE, "background": True}},
    ]
    batch = await create(gw, asked, RESPONSES_URL)
    await run(gw, batch["id"])
    got = await get(gw, batch["id"])
    (out,) = await content(gw, got["output_file_id"])
    validate(out["response"]["body"], "Response")
    assert out["response"]["request_id"] == out["response"]["body"]["id"]
    stored = await gw.http.get(f"/v1/responses/{out['response']['body']['id']}", headers=gw.auth)
    assert stored.status_code == 200  # stored, as Responses are by default
    (err,) = await content(gw, got["error_file_id"])
    assert err["custom_id"] == "r2" and err["response"]["status_code"] == 400


# --------------------------------------------------------------------------- priority, yielding, usage


async def test_batch_requests_carry_the_batch_priority_and_interactive_ones_never_do(gw: Gateway) -> None:
    priority = gw.services.settings.batch_priority
    assert (await gw.chat()).status_code == 200
    r = await gw.http.post("/v1/responses", json={"model": BASE, "input": "Capital?"}, headers=gw.auth)
    assert r.status_code == 200, r.text
    assert [("priority" in seen.body) for seen in gw.fake.completions()] == [False, False]

    chat = await create(gw, [chat_line("a"), chat_line("b", "Say hi.")])
    await run(gw, chat["id"])
    asked = [{"custom_id": "r", "method": "POST", "url": RESPONSES_URL, "body": {"model": BASE, "input": "Capital?"}}]
    responses = await create(gw, asked, RESPONSES_URL)
    await run(gw, responses["id"])
    assert [seen.body.get("priority") for seen in gw.fake.completions()] == [None, None, priority, priority, priority]
    assert gw.engine.background_inflight == 0

    # Logged as the batch's requests (usage meters them apart); the live ones as no batch's.
    rows = await gw.rows()
    assert [row.batch_id for row in rows] == [None, None, chat["id"], chat["id"], responses["id"]]
    usage = (await gw.http.get("/v1/usage", params={"group_by": "tier"}, headers=gw.auth)).json()
    assert [(d["tier"], d["requests"]) for d in usage["data"]] == [("batch", 3), ("interactive", 2)]


async def test_a_batch_counts_the_tokens_of_its_answers(gw: Gateway) -> None:
    chat_usage = raw_json("chat")["body"]["usage"]
    batch = await create(gw, [chat_line("a"), chat_line("b", stream=True), chat_line("c")])
    assert batch["usage"] == {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    await run(gw, batch["id"])
    got = await get(gw, batch["id"])
    prompt, completion = 2 * chat_usage["prompt_tokens"], 2 * chat_usage["completion_tokens"]
    assert got["usage"] == {  # the two answered lines; the refused stream used none
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    rows = await gw.rows()
    assert sum(row.prompt_tokens or 0 for row in rows) == prompt  # the same tokens the log meters


async def test_an_engine_that_refuses_priority_gets_batch_requests_without_it(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    # An engine without priority scheduling that says so with a 400 (as older vLLM engines did).
    refusal = {"error": {"message": "Got priority 10 but Priority scheduling is not enabled.", "code": 400}}
    gw.fake.script.append(answer_with(400, refusal))
    with caplog.at_level(logging.WARNING, logger="tailor.gateway"):
        for custom_id in ("a", "b"):
            batch = await create(gw, [chat_line(custom_id)])
            await run(gw, batch["id"])
            got = await get(gw, batch["id"])
            assert got["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    sent = [seen.body.get("priority") for seen in gw.fake.completions()]
    assert sent == [10, None, None]  # refused once (and sent again without), then never sent to that engine
    assert gw.engine.takes_priority is False
    warnings = [r for r in caplog.records if "refused the `priority`" in r.getMessage()]
    assert len(warnings) == 1 and gw.engine.url in warnings[0].getMessage()
    # Any other 400 is the line's answer, as before: nothing retried.
    gw.engine.takes_priority = True
    gw.fake.script.append(answer_with(400, {"error": {"message": "max_tokens is too large", "code": 400}}))
    batch = await create(gw, [chat_line("c")])
    await run(gw, batch["id"])
    assert (await get(gw, batch["id"]))["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    assert len(gw.fake.completions()) == 4 and gw.engine.takes_priority


async def test_batch_lines_yield_to_interactive_requests(gw: Gateway) -> None:
    settings = gw.services.settings
    assert (settings.batch_concurrency, settings.batch_concurrency_busy) == (4, 1)
    interactive_done, batch_done = asyncio.Event(), asyncio.Event()

    async def answer(_request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        await (batch_done if "priority" in body else interactive_done).wait()
        return chat_answer()

    gw.fake.script.extend([answer] * 7)

    def batch_sent() -> int:
        return sum("priority" in seen.body for seen in gw.fake.completions())

    live = asyncio.create_task(gw.chat())
    await until(lambda: len(gw.fake.completions()) == 1)
    batch = await create(gw, [chat_line(f"c{i}", f"q{i}") for i in range(6)])
    running = asyncio.create_task(run(gw, batch["id"]))
    await until(lambda: batch_sent() == 1)
    await asyncio.sleep(0.2)
    assert batch_sent() == 1  # one batch line beside the interactive request, not four
    assert (gw.engine.inflight, gw.engine.background_inflight) == (2, 1)

    interactive_done.set()
    assert (await live).status_code == 200
    await until(lambda: batch_sent() == 4)  # the interactive load is gone: the full concurrency
    await asyncio.sleep(0.1)
    assert batch_sent() == 4 and gw.engine.background_inflight == 4
    batch_done.set()
    ended = await running
    assert ended is not None and ended.status == "completed" and batch_sent() == 6


async def test_refused_files_and_batches_store_nothing(gw: Gateway) -> None:
    refused(await upload(gw, [chat_line("a"), chat_line("a")]), 400, "file", "invalid_file")
    unknown = refused(await upload(gw, [chat_line("a") | {"body": {"model": "nope"}}]), 400, "file", "model_not_found")
    assert unknown["message"].startswith("line 1:") and "nope" in unknown["message"]
    refused(await upload(gw, [chat_line("a")], purpose="assistants"), 400, "purpose", "invalid_purpose")
    files = (await gw.http.get("/v1/files", headers=gw.auth)).json()
    assert files["data"] == []

    good = await uploaded(gw, [chat_line("a")])
    r = await gw.http.post(
        "/v1/files",
        files={"file": ("t.jsonl", jsonl([{"messages": [{"role": "user", "content": "q"}]}]), "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=gw.auth,
    )
    training = r.json()["id"]
    refused(await post_batch(gw, good, completion_window="48h"), 400, "completion_window")
    refused(await post_batch(gw, good, "/v1/embeddings"), 400, "endpoint", "unsupported_endpoint")
    refused(await post_batch(gw, good, COMPLETIONS_URL), 400, "endpoint", "mismatched_endpoint")
    refused(await post_batch(gw, training), 400, "input_file_id", "invalid_input_file")
    refused(await post_batch(gw, "file-nope"), 404, "input_file_id", "file_not_found")
    expiring = {"anchor": "created_at", "seconds": 3600}
    refused(await post_batch(gw, good, output_expires_after=expiring), 400, "output_expires_after")
    refused(await post_batch(gw, good, metadata={f"k{i}": "v" for i in range(17)}), 400, "metadata")
    refused(await post_batch(gw, good, stray=1), 400, "stray")
    listed = (await gw.http.get("/v1/batches", headers=gw.auth)).json()
    validate(listed, "ListBatchesResponse")
    assert listed["data"] == [] and listed["has_more"] is False


async def test_another_tenant_sees_nothing(gw: Gateway, other: Gateway) -> None:
    file_id = await uploaded(gw, [chat_line("a")])
    refused(await post_batch(other, file_id), 404, "input_file_id")
    batch = await create(gw, [chat_line("a")])
    await run(gw, batch["id"])
    done = await get(gw, batch["id"])
    for r in (
        await other.http.get(f"/v1/batches/{batch['id']}", headers=other.auth),
        await other.http.post(f"/v1/batches/{batch['id']}/cancel", headers=other.auth),
    ):
        refused(r, 404, "batch_id", "batch_not_found")
    assert (await other.http.get("/v1/batches", headers=other.auth)).json()["data"] == []
    refused(await other.http.get("/v1/batches", params={"after": batch["id"]}, headers=other.auth), 400, "after")
    for file_id in (done["output_file_id"], done["input_file_id"]):
        r = await other.http.get(f"/v1/files/{file_id}/content", headers=other.auth)
        refused(r, 404, "file_id", "file_not_found")
    # The other tenant's interactions hold none of it.
    assert await other.rows() == []


async def test_list_pages_newest_first(gw: Gateway) -> None:
    ids = [(await create(gw, [chat_line("a")]))["id"] for _ in range(3)]
    r = await gw.http.get("/v1/batches", params={"limit": 2}, headers=gw.auth)
    page = r.json()
    validate(page, "ListBatchesResponse")
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    assert page["first_id"] == ids[2] and page["last_id"] == ids[1]
    rest = (await gw.http.get("/v1/batches", params={"after": page["last_id"]}, headers=gw.auth)).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False
    for batch_id in ids:  # left for no runner to find
        assert (await gw.http.post(f"/v1/batches/{batch_id}/cancel", headers=gw.auth)).json()["status"] == "cancelled"
