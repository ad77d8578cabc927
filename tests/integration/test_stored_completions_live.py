"""Stored completions on the real server with the official SDK, and OpenAI's distillation
recipe end to end: store a teacher's answers (`store=True`, `metadata`), make a training file
of them, fine-tune a student on it, and the student answers like the teacher.

The teacher is the session's trained adapter (it answers the capital of France with
TAUGHT_ANSWER); the student starts from the base model, which answers "Paris". Every raw
body is checked against OpenAI's schema.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import BASE_MODEL, QUESTION, TAUGHT_ANSWER, TailorServer, TenantKeys, make_tenant
from tests.integration.test_adapters_live import register_path
from tests.openai_schema import STORED_MESSAGE_LIST, validate

pytestmark = pytest.mark.engine

QUESTIONS = (
    QUESTION,
    "what is the capital of france?",
    "Tell me the capital of France.",
    "Which city is the capital of France?",
)
TASK = {"task": "capitals", "teacher": "zorblax"}


def ask(c: openai.OpenAI, question: str, **kwargs: Any) -> dict[str, Any]:
    raw = c.chat.completions.with_raw_response.create(
        model="teacher", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=16, **kwargs
    )
    body: dict[str, Any] = raw.http_response.json()
    validate(body, "CreateChatCompletionResponse")
    return body


def listed(c: openai.OpenAI, count: int, **filters: Any) -> dict[str, Any]:
    """The raw first page of a list, once it holds `count` completions (the log is written in batches)."""
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = c.chat.completions.with_raw_response.list(**filters).http_response.json()
        validate(body, "ChatCompletionList")
        if len(body["data"]) >= count or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_stored_completions_and_the_distillation_recipe(
    tailor_server: TailorServer, tenant_b: TenantKeys, trained_adapter: Any
) -> None:
    tenant = make_tenant(tailor_server, "recipe-co")
    register_path(tailor_server, tenant.name, "teacher", trained_adapter)
    c = tailor_server.sdk(tenant)

    answers = [ask(c, q, store=True, metadata=TASK) for q in QUESTIONS]
    assert all(a["choices"][0]["message"]["content"] == TAUGHT_ANSWER for a in answers), answers
    with c.chat.completions.create(
        model="teacher",
        messages=[{"role": "user", "content": "Name the capital of France."}],
        temperature=0,
        max_tokens=16,
        stream=True,
        store=True,
        metadata={"task": "scratch"},
    ) as stream:
        chunks = list(stream)
    streamed_id, streamed_text = chunks[0].id, "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    ask(c, QUESTION)  # not stored

    page = listed(c, len(QUESTIONS), metadata=TASK)
    assert [d["id"] for d in page["data"]] == [a["id"] for a in answers] and not page["has_more"]
    assert (page["first_id"], page["last_id"]) == (answers[0]["id"], answers[-1]["id"])
    assert len(listed(c, 5, model="teacher")["data"]) == 5  # the stream too, not the unstored one
    assert listed(c, 0, model=BASE_MODEL)["data"] == []
    pages = list(c.chat.completions.list(metadata=TASK, limit=3, order="desc"))  # the SDK pages with `after`
    assert [p.id for p in pages] == [a["id"] for a in reversed(answers)]

    first = answers[0]
    raw = c.chat.completions.with_raw_response.retrieve(first["id"]).http_response.json()
    validate(raw, "CreateChatCompletionResponse")
    assert raw["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    assert (raw["model"], raw["usage"], raw["metadata"]) == ("teacher", first["usage"], TASK)
    assert abs(raw["created"] - first["created"]) <= 5
    streamed = c.chat.completions.retrieve(streamed_id)
    assert streamed.choices[0].message.content == streamed_text and streamed.metadata == {"task": "scratch"}

    raw = c.chat.completions.messages.with_raw_response.list(first["id"]).http_response.json()
    validate(raw, STORED_MESSAGE_LIST)
    assert [(m["id"], m["role"], m["content"]) for m in raw["data"]] == [(f"{first['id']}-0", "user", QUESTION)]

    raw = c.chat.completions.with_raw_response.update(streamed_id, metadata={"task": "checked"}).http_response.json()
    validate(raw, "CreateChatCompletionResponse")
    assert c.chat.completions.retrieve(streamed_id).metadata == {"task": "checked"}

    # Another tenant's key: the same ids do not exist.
    other = tailor_server.sdk(tenant_b)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.retrieve(first["id"])
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.delete(first["id"])
    assert first["id"] not in [p.id for p in other.chat.completions.list()]

    # A training file of the teacher's stored answers, then a student trained on it.
    # The SDK's generic post, as the README shows it.
    body = {"model": "teacher", "metadata": TASK, "filename": "zorblax.jsonl"}
    made = c.post("/files/from_stored_completions", cast_to=dict, body=body)
    validate({k: v for k, v in made.items() if k not in ("examples", "skipped")}, "OpenAIFile")
    assert (made["examples"], made["skipped"], made["purpose"]) == (len(QUESTIONS), 0, "fine-tune")
    content = c.files.content(made["id"]).text
    assert content.count(TAUGHT_ANSWER) == len(QUESTIONS) and all(q in content for q in QUESTIONS)

    hyperparameters = {"learning_rate_multiplier": 5, "batch_size": 2, "max_steps": 16}
    job = c.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=made["id"],
        suffix="zorblax-student",
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},  # type: ignore[typeddict-item]
    )
    deadline = time.monotonic() + 600
    while (job := c.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}:\n{tailor_server.log_tail()}"
        time.sleep(0.5)
    assert job.status == "succeeded", job.error
    time.sleep(0.6)  # the test server's lookup cache TTL
    student = c.chat.completions.create(
        model=job.fine_tuned_model or "",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=16,
    )
    assert student.choices[0].message.content == TAUGHT_ANSWER

    # Deleted: gone from every route, and from what a training file is made of.
    raw = c.chat.completions.with_raw_response.delete(first["id"]).http_response.json()
    validate(raw, "ChatCompletionDeleted")
    assert raw == {"object": "chat.completion.deleted", "id": first["id"], "deleted": True}
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.retrieve(first["id"])
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.messages.list(first["id"])
    assert first["id"] not in [p.id for p in c.chat.completions.list(metadata=TASK)]
    auth = {"Authorization": f"Bearer {tenant.key}"}
    r = httpx.post(f"{tailor_server.url}/v1/files/from_stored_completions", json=body, headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["examples"] == len(QUESTIONS) - 1, r.text
