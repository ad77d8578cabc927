"""The Batch API's test helpers (tests/gateway/test_batches_*.py): batch files and batches made
through the real app's routes, runs driven by the test (`BatchRunner.run` on a claimed batch),
and their output read back, each checked against OpenAI's schema."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy import select

from core.models import Batch
from gateway.batches import lease
from gateway.batches.runner import BatchRunner
from gateway.batches.store import BatchInfo
from tests.gateway.gateway_world import BASE, Gateway, raw_json
from tests.gateway.module_gateway import module_gateway
from tests.openai_schema import BATCH_REQUEST_OUTPUT, validate

CHAT_URL, COMPLETIONS_URL, RESPONSES_URL = "/v1/chat/completions", "/v1/completions", "/v1/responses"
ANSWER = "The capital of France is Paris."  # the fake engine's chat answer (tests/fixtures/vllm_raw)


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


def status_of(gw: Gateway, batch_id: str) -> str:
    with gw.services.db.session() as s:
        return str(s.scalar(select(Batch.status).where(Batch.id == batch_id)))


def batch_gateway() -> Any:
    """A module's `shared` gateway for these tests: it runs no batches of its own, so the tests
    drive each run; retries wait at most 0.2 s."""
    return module_gateway("batches", run_batches=False, batch_retry_max_wait_s=0.2, batch_concurrency=4)
