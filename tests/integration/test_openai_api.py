"""The OpenAI routes on a real engine, driven with the official SDK, every body schema-checked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import BASE_MODEL, QUESTION, TailorServer, TenantKeys
from tests.openai_schema import COMPLETION_STREAM, validate

pytestmark = pytest.mark.engine


def sse_events(response: httpx.Response) -> list[dict]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


def test_models_list_and_retrieve(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    c = tailor_server.sdk(tenant_a)
    raw = c.models.with_raw_response.list()
    validate(raw.http_response.json(), "ListModelsResponse")
    ids = [m.id for m in raw.parse().data]
    assert BASE_MODEL in ids
    model = c.models.retrieve(BASE_MODEL)
    validate(model.model_dump(), "Model")
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("no-such-model")


def _refused(call: Callable[[], object], error: type[openai.APIStatusError], code: str) -> None:
    with pytest.raises(error) as info:
        call()
    body = info.value.response.json()
    validate(body, "ErrorResponse")
    assert body["error"]["code"] == code, body


def test_fine_tuned_models_listed_retrieved_and_deleted(
    tailor_server: TailorServer, tenant_a: TenantKeys, tenant_b: TenantKeys, random_adapter: Path
) -> None:
    with tailor_server.admin() as admin:
        for activate in (True, False, False):  # v1 serves `ft-models`; v2 and v3 are pinned names only
            body = {"name": "ft-models", "path": str(random_adapter), "activate": activate}
            assert admin.post(f"/admin/tenants/{tenant_a.name}/adapters/register", json=body).status_code == 201
    c = tailor_server.sdk(tenant_a)
    raw = c.models.with_raw_response.list()
    validate(raw.http_response.json(), "ListModelsResponse")
    ids = [m.id for m in raw.parse().data]
    assert ids[0] == BASE_MODEL
    assert [i for i in ids if i.startswith("ft-models")] == [
        "ft-models",
        "ft-models@v1",
        "ft-models@v2",
        "ft-models@v3",
    ]
    page = c.models.with_raw_response.list(extra_query={"after": "ft-models", "limit": 2}).http_response.json()
    validate(page, "ListModelsResponse")
    assert [m["id"] for m in page["data"]] == ["ft-models@v1", "ft-models@v2"] and page["has_more"] is True
    for name in ("ft-models", "ft-models@v2"):
        card = c.models.with_raw_response.retrieve(name).http_response.json()
        validate(card, "Model")
        assert card["id"] == name and card["owned_by"] == tenant_a.name
    messages = [{"role": "user", "content": QUESTION}]
    assert c.chat.completions.create(model="ft-models@v2", messages=messages, max_tokens=4).model == "ft-models@v2"

    other = tailor_server.sdk(tenant_b)
    assert not [m.id for m in other.models.list() if m.id.startswith("ft-models")]
    _refused(lambda: other.models.retrieve("ft-models@v2"), openai.NotFoundError, "model_not_found")
    _refused(lambda: other.models.delete("ft-models@v2"), openai.NotFoundError, "model_not_found")
    _refused(lambda: c.models.delete("ft-models@v1"), openai.BadRequestError, "model_version_active")
    _refused(lambda: c.models.delete("ft-models"), openai.BadRequestError, "cannot_delete_alias")
    _refused(lambda: c.models.delete(BASE_MODEL), openai.BadRequestError, "cannot_delete_base_model")

    with tailor_server.admin() as admin:
        resident = admin.get("/admin/engines").json()[0]["resident_adapters"]
        raw_deleted = c.models.with_raw_response.delete("ft-models@v2")
        validate(raw_deleted.http_response.json(), "DeleteModelResponse")
        deleted = raw_deleted.parse()
        assert (deleted.id, deleted.object, deleted.deleted) == ("ft-models@v2", "model", True)
        assert admin.get("/admin/engines").json()[0]["resident_adapters"] == resident - 1
    _refused(lambda: c.models.retrieve("ft-models@v2"), openai.NotFoundError, "model_not_found")
    _refused(lambda: c.models.delete("ft-models@v2"), openai.NotFoundError, "model_not_found")
    _refused(
        lambda: c.chat.completions.create(model="ft-models@v2", messages=messages, max_tokens=4),
        openai.NotFoundError,
        "model_not_found",
    )
    assert "ft-models@v2" not in [m.id for m in c.models.list()]
    assert c.chat.completions.create(model="ft-models@v3", messages=messages, max_tokens=4).model == "ft-models@v3"
    r = httpx.get(
        f"{tailor_server.url}/v1/audit",
        params={"action": "adapter.version.delete"},
        headers={"Authorization": f"Bearer {tenant_a.key}"},
    )
    [event] = r.json()["data"]
    assert event["target"] == "ft-models" and event["after"]["version"]["version"] == 2


def test_chat_completion_base_model(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    c = tailor_server.sdk(tenant_a)
    raw = c.chat.completions.with_raw_response.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=20
    )
    body = raw.http_response.json()
    validate(body, "CreateChatCompletionResponse")
    completion = raw.parse()
    assert "Paris" in completion.choices[0].message.content
    assert completion.model == BASE_MODEL
    assert raw.headers["x-tailor-interaction-id"] == completion.id
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0


def test_chat_stream_with_usage_is_schema_valid(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    body = {
        "model": BASE_MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with tailor_server.stream(tenant_a, "/v1/chat/completions", body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        interaction_id = r.headers["x-tailor-interaction-id"]
        events = sse_events(r)
    for event in events:
        validate(event, "CreateChatCompletionStreamResponse")
        assert event["id"] == interaction_id and event["model"] == BASE_MODEL
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert "Paris" in text
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_chat_stream_without_usage_sends_no_usage_chunk(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    c = tailor_server.sdk(tenant_a)
    chunks = list(
        c.chat.completions.create(
            model=BASE_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, stream=True
        )
    )
    assert chunks and all(ch.choices for ch in chunks)
    assert all(ch.usage is None for ch in chunks)


def test_completions_plain_and_streamed(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    c = tailor_server.sdk(tenant_a)
    raw = c.completions.with_raw_response.create(
        model=BASE_MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2
    )
    validate(raw.http_response.json(), "CreateCompletionResponse")
    assert raw.parse().choices[0].text
    body = {
        "model": BASE_MODEL,
        "prompt": "1, 2, 3,",
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with tailor_server.stream(tenant_a, "/v1/completions", body) as r:
        events = sse_events(r)
    assert len(events) > 2
    for event in events:
        validate(event, COMPLETION_STREAM)


def test_sampling_parameters_pass_through(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    c = tailor_server.sdk(tenant_a)
    msgs = [{"role": "user", "content": "Write a short poem about the sea."}]
    two = c.chat.completions.with_raw_response.create(
        model=BASE_MODEL, messages=msgs, n=2, max_tokens=12, temperature=1.0, seed=7, logprobs=True, top_logprobs=2
    )
    validate(two.http_response.json(), "CreateChatCompletionResponse")
    parsed = two.parse()
    assert [ch.index for ch in parsed.choices] == [0, 1]
    assert parsed.choices[0].logprobs.content[0].top_logprobs
    again = c.chat.completions.create(model=BASE_MODEL, messages=msgs, n=2, max_tokens=12, temperature=1.0, seed=7)
    assert [ch.message.content for ch in again.choices] == [ch.message.content for ch in parsed.choices]
    capped = c.chat.completions.create(model=BASE_MODEL, messages=msgs, max_completion_tokens=3, temperature=0)
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 3
    stopped = c.chat.completions.create(
        model=BASE_MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=20,
        stop=["France"],
    )
    assert "France" not in stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("headers", "body", "status", "sdk_error"),
    [
        ({}, {"model": BASE_MODEL, "messages": [{"role": "user", "content": "x"}]}, 401, None),
        (
            {"Authorization": "Bearer tk-wrong"},
            {"model": BASE_MODEL, "messages": [{"role": "user", "content": "x"}]},
            401,
            None,
        ),
        (None, {"model": "not-a-model", "messages": [{"role": "user", "content": "x"}]}, 404, None),
        (None, {"model": BASE_MODEL}, 400, None),
        (None, {"model": BASE_MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9}, 400, None),
        (None, {"model": BASE_MODEL, "messages": "not a list"}, 400, None),
        (None, {"model": BASE_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, 400, None),
    ],
)
def test_errors_are_openai_shaped(
    tailor_server: TailorServer, tenant_a: TenantKeys, headers: dict | None, body: dict, status: int, sdk_error: None
) -> None:
    h = {"Authorization": f"Bearer {tenant_a.key}"} if headers is None else headers
    r = httpx.post(f"{tailor_server.url}/v1/chat/completions", json=body, headers=h, timeout=60)
    assert r.status_code == status, r.text
    validate(r.json(), "ErrorResponse")
    assert "x-tailor-interaction-id" in r.headers or status in (400, 401)


def test_malformed_json_and_oversized_body(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    h = {"Authorization": f"Bearer {tenant_a.key}", "content-type": "application/json"}
    r = httpx.post(f"{tailor_server.url}/v1/chat/completions", content=b"{not json", headers=h)
    assert r.status_code == 400
    validate(r.json(), "ErrorResponse")
    huge = {"model": BASE_MODEL, "messages": [{"role": "user", "content": "x" * 300_000}]}
    r = httpx.post(f"{tailor_server.url}/v1/chat/completions", json=huge, headers=h)
    assert r.status_code == 413
    validate(r.json(), "ErrorResponse")
    r = httpx.get(f"{tailor_server.url}/v1/nothing-here", headers=h)
    assert r.status_code == 404
    validate(r.json(), "ErrorResponse")


def test_sdk_raises_the_right_exceptions(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    c = tailor_server.sdk(tenant_a)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": "x"}], temperature=5)
    bad = openai.OpenAI(base_url=f"{tailor_server.url}/v1", api_key="tk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": "x"}])
