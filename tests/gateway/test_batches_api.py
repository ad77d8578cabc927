"""The Batch API through the real app and a fake vLLM (tests/gateway/gateway_world.py): batch files,
creating, running (every line on the live path), output and error files, cancel, expiry,
retries, a gateway that stops mid-batch and another that goes on, tenant isolation, and the
runner the app starts. Every body, output line and error is checked against OpenAI's schema.

Batches are run here by runners the tests drive (`BatchRunner.run` on a claimed batch); the
shared app runs none of its own (`run_batches=False`), except in the last test.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from core.ids import utcnow
from core.models import Batch
from gateway.batches import lease
from gateway.batches.runner import BatchRunner
from gateway.batches.store import BatchInfo
from tests.gateway.gateway_world import (
    ADMIN,
    BASE,
    Gateway,
    answer_with,
    module_gateway,
    raw_json,
    running_gateway,
    tenant_view,
)
from tests.openai_schema import BATCH_REQUEST_OUTPUT, validate

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT_URL, COMPLETIONS_URL, RESPONSES_URL = "/v1/chat/completions", "/v1/completions", "/v1/responses"
ANSWER = "The capital of France is Paris."  # the fake engine's chat answer (tests/fixtures/vllm_raw)


shared = module_gateway("batches", run_batches=False, batch_retry_max_wait_s=0.2, batch_concurrency=4)


# --------------------------------------------------------------------------- helpers


def chat_line(custom_id: str, content: str = "What is the capital of France?", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT_URL,
        "body": {"model": BASE, "messages": [{"role": "user", "content": content}], "max_tokens": 12, **body},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def upload(gw: Gateway, lines: list[dict[str, Any]], purpose: str = "batch") -> httpx.Response:
    files = {"file": ("requests.jsonl", jsonl(lines), "application/jsonl")}
    return await gw.http.post("/v1/files", files=files, data={"purpose": purpose}, headers=gw.auth)


async def uploaded(gw: Gateway, lines: list[dict[str, Any]]) -> str:
    r = await upload(gw, lines)
    assert r.status_code == 200, r.text
    validate(r.json(), "OpenAIFile")
    assert r.json()["purpose"] == "batch"
    return str(r.json()["id"])


async def post_batch(gw: Gateway, file_id: str, endpoint: str = CHAT_URL, **extra: Any) -> httpx.Response:
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra}
    return await gw.http.post("/v1/batches", json=body, headers=gw.auth)


async def create(gw: Gateway, lines: list[dict[str, Any]], endpoint: str = CHAT_URL, **extra: Any) -> dict[str, Any]:
    r = await post_batch(gw, await uploaded(gw, lines), endpoint, **extra)
    assert r.status_code == 200, r.text
    batch: dict[str, Any] = r.json()
    validate(batch, "Batch")
    assert batch["status"] == "validating" and batch["request_counts"] == {
        "total": len(lines),
        "completed": 0,
        "failed": 0,
    }
    return batch


async def get(gw: Gateway, batch_id: str) -> dict[str, Any]:
    r = await gw.http.get(f"/v1/batches/{batch_id}", headers=gw.auth)
    assert r.status_code == 200, r.text
    validate(r.json(), "Batch")
    return r.json()  # type: ignore[no-any-return]


async def run(gw: Gateway, batch_id: str, worker: str = "gw-a") -> BatchInfo | None:
    """Claim `batch_id` as gateway `worker` and run it to its end."""
    runner = BatchRunner(gw.services, worker_id=worker)
    claimed = await asyncio.to_thread(lease.claim, gw.services.db, worker, lease_s=60, batch_id=batch_id)
    assert claimed is not None
    return await runner.run(claimed)


async def content(gw: Gateway, file_id: str) -> list[dict[str, Any]]:
    r = await gw.http.get(f"/v1/files/{file_id}/content", headers=gw.auth)
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines()]
    for line in lines:
        validate(line, BATCH_REQUEST_OUTPUT)
        assert set(line) == {"id", "custom_id", "response", "error"} and line["id"].startswith("batch_req_")
    return lines


def refused(r: httpx.Response, status: int, param: str | None, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    validate(r.json(), "ErrorResponse")
    error: dict[str, Any] = r.json()["error"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def chat_answer(model: str = BASE) -> httpx.Response:
    body = raw_json("chat")["body"]
    return httpx.Response(200, json={**body, "model": model})


Responder = Callable[[httpx.Request, dict[str, Any]], Awaitable[httpx.Response]]


def by_prompt(answer: Callable[[str], Awaitable[httpx.Response]], times: int) -> list[Responder]:
    """`times` script steps that hand each request's last message to `answer`."""

    async def respond(_request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        return await answer(body["messages"][-1]["content"])

    return [respond] * times


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


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


# --------------------------------------------------------------------------- stopping


async def test_cancel_lets_running_lines_finish_and_keeps_their_output(gw: Gateway) -> None:
    untouched = await create(gw, [chat_line("a")])
    r = await gw.http.post(f"/v1/batches/{untouched['id']}/cancel", headers=gw.auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    validate(r.json(), "Batch")
    assert "output_file_id" not in r.json()

    release = asyncio.Event()

    async def slow(_prompt: str) -> httpx.Response:
        await release.wait()
        return chat_answer()

    gw.fake.script.extend(by_prompt(slow, 4))
    batch = await create(gw, [chat_line(f"c{i}", f"q{i}") for i in range(6)])
    running = asyncio.create_task(run(gw, batch["id"]))
    await until(lambda: len(gw.fake.completions()) == 4)  # the concurrency limit: 4 in flight
    r = await gw.http.post(f"/v1/batches/{batch['id']}/cancel", headers=gw.auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelling", r.text
    validate(r.json(), "Batch")
    release.set()
    ended = await running
    assert ended is not None and ended.status == "cancelled"
    got = await get(gw, batch["id"])
    assert got["request_counts"] == {"total": 6, "completed": 4, "failed": 0}
    assert got["cancelling_at"] <= got["cancelled_at"] and "error_file_id" not in got
    assert [o["custom_id"] for o in await content(gw, got["output_file_id"])] == ["c0", "c1", "c2", "c3"]
    assert len(gw.fake.completions()) == 4  # the last two never started
    again = await gw.http.post(f"/v1/batches/{batch['id']}/cancel", headers=gw.auth)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_a_batch_past_its_window_expires(gw: Gateway) -> None:
    batch = await create(gw, [chat_line("a"), chat_line("b")])
    with gw.services.db.session() as s:
        s.execute(update(Batch).where(Batch.id == batch["id"]).values(expires_at=utcnow() - timedelta(seconds=1)))
    ended = await run(gw, batch["id"])
    assert ended is not None and ended.status == "expired"
    got = await get(gw, batch["id"])
    assert got["expired_at"] and got["request_counts"]["completed"] == 0 and "output_file_id" not in got
    errors = await content(gw, got["error_file_id"])
    assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in errors] == [
        ("a", None, "batch_expired"),
        ("b", None, "batch_expired"),
    ]
    assert gw.fake.completions() == []


async def test_lines_refused_for_now_are_retried(gw: Gateway) -> None:
    unavailable = {"error": {"message": "busy", "type": "ServiceUnavailableError", "param": None, "code": 503}}
    gw.fake.script.extend([answer_with(503, unavailable), answer_with(503, unavailable)])
    batch = await create(gw, [chat_line("a")])
    await run(gw, batch["id"])
    got = await get(gw, batch["id"])
    assert got["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    assert len(gw.fake.completions()) == 3  # twice 503, then the answer
    statuses = sorted(row.status_code for row in await gw.rows())
    assert statuses == [200, 503, 503]  # every try is logged, as live calls are


async def test_a_stopped_gateway_s_batch_goes_on_elsewhere_without_rerunning_lines(gw: Gateway) -> None:
    stuck = asyncio.Event()
    asked: list[str] = []

    async def answer(prompt: str) -> httpx.Response:
        asked.append(prompt)
        if prompt == "q2" and asked.count("q2") == 1:
            await stuck.wait()  # never set: gateway A stops while this line is in flight
        return chat_answer()

    gw.fake.script.extend(by_prompt(answer, 6))
    batch = await create(gw, [chat_line(f"c{i}", f"q{i}") for i in range(5)])
    first = asyncio.create_task(run(gw, batch["id"], worker="gw-a"))
    await until(lambda: len(lease.done_lines(gw.services.db, batch["id"])) == 4)
    first.cancel()  # gateway A stops: its line in flight is cancelled, the batch released
    with pytest.raises(asyncio.CancelledError):
        await first
    got = await get(gw, batch["id"])
    assert got["status"] == "in_progress" and got["request_counts"]["completed"] == 4

    ended = await run(gw, batch["id"], worker="gw-b")
    assert ended is not None and ended.status == "completed"
    assert sorted(asked) == ["q0", "q1", "q2", "q2", "q3", "q4"]  # only the interrupted line ran again
    outputs = await content(gw, (await get(gw, batch["id"]))["output_file_id"])
    assert [o["custom_id"] for o in outputs] == [f"c{i}" for i in range(5)]
    statuses = sorted(row.status_code for row in await gw.rows())
    assert statuses == [200] * 5 + [499]  # the cancelled try is logged as a client gone away


async def test_a_gateway_dying_while_writing_the_files_leaves_one_set(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = await create(gw, [chat_line("a"), chat_line("b", stream=True)])
    finish = lease.finish

    def dies(*args: Any, **kwargs: Any) -> BatchInfo:
        raise RuntimeError("the gateway died after writing the files")

    monkeypatch.setattr(lease, "finish", dies)
    assert await run(gw, batch["id"], worker="gw-a") is None  # released, for another try
    assert (await get(gw, batch["id"]))["status"] == "finalizing"
    monkeypatch.setattr(lease, "finish", finish)
    ended = await run(gw, batch["id"], worker="gw-b")
    assert ended is not None and ended.status == "completed"
    assert len(gw.fake.completions()) == 1  # nothing ran again
    listed = (await gw.http.get("/v1/files", params={"purpose": "batch_output"}, headers=gw.auth)).json()
    assert sorted(f["id"] for f in listed["data"]) == sorted([ended.output_file_id, ended.error_file_id])
    assert [o["custom_id"] for o in await content(gw, ended.output_file_id)] == ["a"]  # type: ignore[arg-type]


async def test_the_input_file_is_kept_while_its_batch_runs(gw: Gateway) -> None:
    batch = await create(gw, [chat_line("a")])
    r = await gw.http.delete(f"/v1/files/{batch['input_file_id']}", headers=gw.auth)
    refused(r, 409, "file_id", "file_in_use")
    await run(gw, batch["id"])
    assert (await gw.http.delete(f"/v1/files/{batch['input_file_id']}", headers=gw.auth)).status_code == 200


async def test_an_unreadable_input_file_fails_the_batch(gw: Gateway) -> None:
    batch = await create(gw, [chat_line("a")])
    gw.services.blobs.delete(f"files/{gw.tenant_id}/{batch['input_file_id']}.jsonl")
    ended = await run(gw, batch["id"])
    assert ended is not None and ended.status == "failed"
    got = await get(gw, batch["id"])
    assert got["failed_at"] and got["errors"]["object"] == "list"
    assert got["errors"]["data"][0]["param"] == "input_file_id"


async def test_two_gateways_never_run_one_batch_both(gw: Gateway) -> None:
    batch = await create(gw, [chat_line(f"c{i}") for i in range(3)])
    a, b = BatchRunner(gw.services, worker_id="gw-a"), BatchRunner(gw.services, worker_id="gw-b")
    started = await asyncio.gather(a.poll(), b.poll())
    assert sorted(started, key=len) == [[], [batch["id"]]]
    await asyncio.gather(*a.running.values(), *b.running.values())
    got = await get(gw, batch["id"])
    assert got["status"] == "completed" and got["request_counts"]["completed"] == 3
    assert len(gw.fake.completions()) == 3


# --------------------------------------------------------------------------- the app's runner


async def test_the_app_runs_batches_by_itself(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, batch_poll_s=0.05) as app_run:
        async for g in tenant_view(app_run, tmp_path):
            batch = await create(g, [chat_line("a"), chat_line("b")])
            await until(lambda g=g, batch_id=batch["id"]: _status(g, batch_id) == "completed")
            got = await get(g, batch["id"])
            assert got["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
            assert app_run.app.state.batch_runner is not None


def _status(gw: Gateway, batch_id: str) -> str:
    with gw.services.db.session() as s:
        return str(s.scalar(select(Batch.status).where(Batch.id == batch_id)))
