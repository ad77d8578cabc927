"""The Batch API on the real server with the official SDK: a batch file uploaded, a batch created,
run by the gateway's own runner on the real engine, its output and error files read back, and
another tenant kept out. Every raw body and output line is checked against OpenAI's schema."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import BASE_MODEL, QUESTION, TailorServer, TenantKeys
from tests.openai_schema import BATCH_REQUEST_OUTPUT, validate

pytestmark = pytest.mark.engine

CHAT_URL = "/v1/chat/completions"


def request(custom_id: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": QUESTION}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT_URL,
        "body": {"model": BASE_MODEL, "messages": messages, "temperature": 0, "max_tokens": 16, **body},
    }


def retrieved(c: openai.OpenAI, batch_id: str) -> dict[str, Any]:
    body: dict[str, Any] = c.batches.with_raw_response.retrieve(batch_id).http_response.json()
    validate(body, "Batch")
    return body


def output_lines(c: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in c.files.content(file_id).text.splitlines()]
    for line in lines:
        validate(line, BATCH_REQUEST_OUTPUT)
    return lines


def test_a_batch_runs_on_the_engine(tailor_server: TailorServer, tenant_a: TenantKeys, tenant_b: TenantKeys) -> None:
    c = tailor_server.sdk(tenant_a)
    lines = [request("paris", store=True, metadata={"case": "batch-live"}), request("again"), request("s", stream=True)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    raw_file = c.files.with_raw_response.create(file=("requests.jsonl", data), purpose="batch")
    validate(raw_file.http_response.json(), "OpenAIFile")
    raw = c.batches.with_raw_response.create(
        input_file_id=raw_file.parse().id, endpoint=CHAT_URL, completion_window="24h", metadata={"run": "live"}
    )
    created = raw.http_response.json()
    validate(created, "Batch")
    assert created["status"] == "validating" and created["metadata"] == {"run": "live"}

    deadline = time.monotonic() + 120
    batch = retrieved(c, created["id"])
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = retrieved(c, created["id"])
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert c.batches.retrieve(created["id"]).output_file_id == batch["output_file_id"]  # the SDK's own parsing

    outputs = output_lines(c, batch["output_file_id"])
    assert [o["custom_id"] for o in outputs] == ["paris", "again"]
    for out in outputs:
        body = out["response"]["body"]
        validate(body, "CreateChatCompletionResponse")
        assert out["response"]["status_code"] == 200 and out["response"]["request_id"] == body["id"]
        assert "Paris" in body["choices"][0]["message"]["content"]
    (streamed,) = output_lines(c, batch["error_file_id"])
    assert streamed["custom_id"] == "s" and streamed["response"]["status_code"] == 400
    validate(streamed["response"]["body"], "ErrorResponse")

    # The engine (started with --scheduling-policy priority) took the lines' `priority`, and the
    # batch counts the tokens of its answers.
    assert "refused the `priority`" not in tailor_server.log_path.read_text(errors="replace")
    prompt = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in outputs)
    completion = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in outputs)
    assert batch["usage"] == {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    assert prompt > 0 and completion > 0
    # Usage reports the lines as the batch tier, at half the price (TAILOR_PRICES: 1.0 and 2.0 per 1K).
    deadline = time.monotonic() + 30
    while True:
        auth = {"Authorization": f"Bearer {tenant_a.key}"}
        usage = httpx.get(f"{tailor_server.url}/v1/usage", params={"group_by": "tier"}, headers=auth).json()
        tiers = {row["tier"]: row for row in usage["data"]}
        if tiers.get("batch", {}).get("requests") == 2:
            break
        assert time.monotonic() < deadline, usage
        time.sleep(0.2)
    assert (tiers["batch"]["prompt_tokens"], tiers["batch"]["completion_tokens"]) == (prompt, completion)
    assert tiers["batch"]["cost"] == pytest.approx(0.5 * (prompt * 1.0 + completion * 2.0) / 1000)

    # The line ran on the live path: a stored completion like any other, under its metadata
    # (listed once the interaction log has written it).
    deadline = time.monotonic() + 30
    while not (stored := c.chat.completions.list(metadata={"case": "batch-live"}).data):
        assert time.monotonic() < deadline, "the batch line's stored completion never appeared"
        time.sleep(0.2)
    assert [s.id for s in stored] == [outputs[0]["response"]["request_id"]]
    listed = c.batches.with_raw_response.list().http_response.json()
    validate(listed, "ListBatchesResponse")
    assert created["id"] in [b["id"] for b in listed["data"]]
    with pytest.raises(openai.BadRequestError):
        c.batches.cancel(created["id"])  # completed: nothing to cancel

    other = tailor_server.sdk(tenant_b)
    for call in (
        lambda: other.batches.retrieve(created["id"]),
        lambda: other.batches.cancel(created["id"]),
        lambda: other.files.content(batch["output_file_id"]),
    ):
        with pytest.raises(openai.NotFoundError) as refused:
            call()
        validate(refused.value.response.json(), "ErrorResponse")
    assert created["id"] not in [b.id for b in other.batches.list()]
