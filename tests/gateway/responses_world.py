"""The Responses API tests' helpers (tests/gateway/test_responses_*api.py): responses created and
read through the real app's routes, each body checked against OpenAI's schema, and what the
engine was sent."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.proxy import INTERACTION_HEADER
from tests.gateway.gateway_world import BASE, Gateway
from tests.openai_schema import response_stream_events, validate

ANSWER = "The capital of France is Paris."  # the fake engine's answer (tests/fixtures/vllm_raw)
QUESTION = "What is the capital of France?"


async def post(gw: Gateway, **body: Any) -> httpx.Response:
    return await gw.http.post("/v1/responses", json={"model": BASE, **body}, headers=gw.auth)


async def create(gw: Gateway, **body: Any) -> dict[str, Any]:
    r = await post(gw, **{"input": QUESTION, **body})
    assert r.status_code == 200, r.text
    made: dict[str, Any] = r.json()
    validate(made, "Response")
    assert r.headers[INTERACTION_HEADER] == made["id"]
    return made


async def get(gw: Gateway, path: str, status: int = 200, **params: Any) -> dict[str, Any]:
    r = await gw.http.get(f"/v1/responses/{path}", params=params, headers=gw.auth)
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    validate(body, "ErrorResponse" if status >= 400 else "ResponseItemList" if "/" in path else "Response")
    return body


def refused(r: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    validate(r.json(), "ErrorResponse")
    error: dict[str, Any] = r.json()["error"]
    assert error["param"] == param, error
    return error


def stream_events(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.headers["content-type"].startswith("text/event-stream")
    return response_stream_events(r.text)


def sent(gw: Gateway) -> dict[str, Any]:
    """The chat request the engine got last."""
    body: dict[str, Any] = gw.fake.completions()[-1].body
    return body


def output_text(body: dict[str, Any]) -> str:
    return "".join(p["text"] for item in body["output"] for p in item["content"])
