"""The Batch API through the real app and a fake vLLM (see test_batches_api.py): cancel, expiry,
retries, a gateway that stops mid-batch and another that goes on, input files kept or unreadable,
and the runner the app starts.

Batches are run here by runners the tests drive (`BatchRunner.run` on a claimed batch); the
shared app runs none of its own (`run_batches=False`), except in the last test.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from core.ids import utcnow
from core.models import Batch
from gateway.batches import lease
from gateway.batches.runner import BatchRunner
from gateway.batches.store import BatchInfo
from tests.gateway.batch_world import (
    batch_gateway,
    by_prompt,
    chat_answer,
    chat_line,
    content,
    create,
    get,
    refused,
    run,
    status_of,
    until,
)
from tests.gateway.gateway_world import Gateway, answer_with, running_gateway, tenant_view
from tests.openai_schema import validate

pytestmark = pytest.mark.asyncio(loop_scope="module")

shared = batch_gateway()


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
            await until(lambda g=g, batch_id=batch["id"]: status_of(g, batch_id) == "completed")
            got = await get(g, batch["id"])
            assert got["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
            assert app_run.app.state.batch_runner is not None
