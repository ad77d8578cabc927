"""A batch through the Batch API: its input file, created, watched, cancelled."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from loadtests.bench_batch_priority.workload import CHAT_PATH, BenchConfig, chat_body
from loadtests.prompts import PROMPTS

POLL_S = 0.2
ENDED = ("completed", "failed", "expired", "cancelled")


def batch_file(model: str, cfg: BenchConfig) -> bytes:
    """The batch's input file: `batch_lines` chat requests, the same work as interactive ones."""
    lines = (
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": CHAT_PATH,
            "body": chat_body(model, PROMPTS[i % len(PROMPTS)], cfg),
        }
        for i in range(cfg.batch_lines)
    )
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def _json(resp: Awaitable[httpx.Response], what: str) -> dict[str, Any]:
    r = await resp
    if r.status_code != 200:
        raise RuntimeError(f"{what}: {r.status_code} {r.text[:300]}")
    return r.json()  # type: ignore[no-any-return]


async def start_batch(client: httpx.AsyncClient, model: str, cfg: BenchConfig) -> str:
    files = {"file": ("bench.jsonl", batch_file(model, cfg), "application/jsonl")}
    uploaded = await _json(client.post("/v1/files", files=files, data={"purpose": "batch"}), "uploading the batch")
    body = {"input_file_id": uploaded["id"], "endpoint": CHAT_PATH, "completion_window": "24h"}
    batch = await _json(client.post("/v1/batches", json=body), "creating the batch")
    return str(batch["id"])


async def batch_state(client: httpx.AsyncClient, batch_id: str) -> tuple[str, int]:
    """(status, lines answered so far)."""
    batch = await _json(client.get(f"/v1/batches/{batch_id}"), "reading the batch")
    counts = batch["request_counts"]
    return str(batch["status"]), int(counts["completed"]) + int(counts["failed"])


async def wait_for(
    client: httpx.AsyncClient, batch_id: str, done: Callable[[str, int], bool], timeout_s: float
) -> tuple[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, answered = await batch_state(client, batch_id)
        if done(status, answered):
            return status, answered
        if status in ENDED or time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} is {status} with {answered} lines answered; it was expected to run")
        await asyncio.sleep(POLL_S)


async def stop_batch(client: httpx.AsyncClient, batch_id: str, timeout_s: float) -> None:
    """Cancel the batch (unless it ended already) and wait until its lines in flight finished."""
    r = await client.post(f"/v1/batches/{batch_id}/cancel")
    if r.status_code != 200 and (await batch_state(client, batch_id))[0] not in ENDED:
        raise RuntimeError(f"cancelling the batch: {r.status_code} {r.text[:300]}")
    await wait_for(client, batch_id, lambda status, _n: status in ENDED, timeout_s)
