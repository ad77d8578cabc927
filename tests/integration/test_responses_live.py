"""The Responses API on the real server with the official SDK: create (plain and streamed),
previous_response_id, retrieve, input items, delete, on the base model and on an adapter,
tenant isolation and feedback by response id. Every raw body and event is checked against
OpenAI's schema."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import BASE_MODEL, QUESTION, TAUGHT_ANSWER, TailorServer, TenantKeys, make_tenant
from tests.integration.test_adapters_live import register_path
from tests.openai_schema import RESPONSE_DELETED, response_stream_events, validate

pytestmark = pytest.mark.engine


def create(c: openai.OpenAI, **kwargs: Any) -> dict[str, Any]:
    raw = c.responses.with_raw_response.create(temperature=0, max_output_tokens=24, **kwargs)
    body: dict[str, Any] = raw.http_response.json()
    validate(body, "Response")
    assert raw.headers["x-tailor-interaction-id"] == body["id"]
    return body


def streamed(c: openai.OpenAI, **kwargs: Any) -> list[dict[str, Any]]:
    with c.responses.with_streaming_response.create(temperature=0, max_output_tokens=24, stream=True, **kwargs) as r:
        return response_stream_events(r.read().decode())


def text_of(body: dict[str, Any]) -> str:
    return "".join(part["text"] for item in body["output"] for part in item["content"])


def test_responses_on_the_base_model(tailor_server: TailorServer, tenant_a: TenantKeys, tenant_b: TenantKeys) -> None:
    c = tailor_server.sdk(tenant_a)
    first = create(c, model=BASE_MODEL, input=QUESTION, metadata={"case": "live"})
    assert "Paris" in text_of(first) and first["status"] in ("completed", "incomplete")
    assert first["usage"]["input_tokens"] > 0 and first["usage"]["output_tokens"] > 0

    events = streamed(c, model=BASE_MODEL, input="And the capital of Germany?", previous_response_id=first["id"])
    second = events[-1]["response"]
    assert events[0]["type"] == "response.created" and second["previous_response_id"] == first["id"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == text_of(second) and deltas

    # The SDK's own stream reading, continuing the stored conversation once more.
    with c.responses.create(
        model=BASE_MODEL, input="Thanks.", previous_response_id=second["id"], stream=True, max_output_tokens=16
    ) as stream:
        sdk_events = list(stream)
    assert sdk_events[-1].type in ("response.completed", "response.incomplete")
    third = sdk_events[-1].response

    got = c.responses.with_raw_response.retrieve(second["id"]).http_response.json()
    validate(got, "Response")
    assert got == second
    listed = c.responses.input_items.with_raw_response.list(third.id, order="asc").http_response.json()
    validate(listed, "ResponseItemList")
    texts = [item["content"][0]["text"] for item in listed["data"]]
    assert texts == [QUESTION, text_of(first), "And the capital of Germany?", text_of(second), "Thanks."]
    assert [i.id for i in c.responses.input_items.list(third.id, order="asc", limit=2)] == [
        i["id"] for i in listed["data"]
    ]

    with pytest.raises(openai.NotFoundError):
        tailor_server.sdk(tenant_b).responses.retrieve(first["id"])
    raw = c.responses.with_raw_response.delete(first["id"])
    validate(raw.http_response.json(), RESPONSE_DELETED)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(first["id"])
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.create(model=BASE_MODEL, input=QUESTION, background=True)
    validate(err.value.response.json(), "ErrorResponse")
    assert err.value.body["param"] == "background"  # type: ignore[index]


def test_responses_on_an_adapter(tailor_server: TailorServer, trained_adapter: Any) -> None:
    tenant = make_tenant(tailor_server, "responses-co")
    register_path(tailor_server, tenant.name, "support", trained_adapter)
    c = tailor_server.sdk(tenant)
    plain = create(c, model="support", input=QUESTION)
    assert text_of(plain) == TAUGHT_ANSWER and plain["model"] == "support"
    events = streamed(c, model="support", input=QUESTION, store=False)
    final = events[-1]["response"]
    assert final["model"] == "support" and text_of(final) == TAUGHT_ANSWER and final["store"] is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(final["id"])

    # Feedback names a response by its id, as it names a chat completion.
    r = httpx.post(
        f"{tailor_server.url}/v1/feedback",
        json={"interaction_id": plain["id"], "rating": "good"},
        headers={"authorization": f"Bearer {tenant.key}"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    assert r.json()["interaction_id"] == plain["id"] and r.json()["model"] == "support"
