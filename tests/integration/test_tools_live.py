"""Tools and structured outputs on the real engine, as the official SDK uses them.

Named tool choice, json_schema (strict) and json_object, plain and streamed, on the base model
and on an adapter; every raw body and stream chunk is checked against OpenAI's schema, and
what the model produced is checked against the schema it was given. The session's server has
no tool-call parser, so "auto" is refused there; a second gateway with
TAILOR_ENGINE_TOOL_CALL_PARSER shows the same requests and "auto" on an engine with vLLM's
tool flags: the session's evaluation engine, started with them, so no third engine starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import LiveEngine
from tests.integration.conftest import BASE_MODEL, TailorServer, TenantKeys, make_tenant, running_tailor
from tests.integration.test_adapters_live import register_path
from tests.integration.test_openai_api import sse_events
from tests.openai_schema import validate

pytestmark = pytest.mark.engine

ADAPTER = "tooler"
QUESTION = [{"role": "user", "content": "Reply with a JSON object whose key city is Paris."}]


class Weather(BaseModel):
    city: str = Field(max_length=24)
    unit: Literal["celsius", "fahrenheit"]


WEATHER_TOOL = openai.pydantic_function_tool(Weather, name="get_weather", description="The weather in a city.")
PARAMS: dict[str, Any] = WEATHER_TOOL["function"]["parameters"]  # the strict schema the SDK sends
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
STRICT_FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": PARAMS, "strict": True}}
GENERATION = {"temperature": 0, "max_tokens": 100}


@pytest.fixture(scope="module")
def tools_tenant(tailor_server: TailorServer, trained_adapter: Path) -> TenantKeys:
    tenant = make_tenant(tailor_server, "tools-co")
    register_path(tailor_server, tenant.name, ADAPTER, trained_adapter)
    return tenant


@pytest.fixture(params=[BASE_MODEL, ADAPTER])
def model(request: pytest.FixtureRequest) -> str:
    return request.param


def body_of(model: str) -> dict[str, Any]:
    return {"model": model, "messages": QUESTION, **GENERATION}


def raw_stream(server: TailorServer, tenant: TenantKeys, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every chunk of a streamed chat completion, each checked against OpenAI's schema."""
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with server.stream(tenant, "/v1/chat/completions", streamed) as r:
        assert r.status_code == 200, r.read().decode()
        events = sse_events(r)
    for event in events:
        validate(event, "CreateChatCompletionStreamResponse")
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    return events


def streamed_call(events: list[dict[str, Any]]) -> tuple[str, str, str]:
    """(name, arguments, finish_reason) of the one tool call a stream carries."""
    parts = [p for e in events for c in e["choices"] for p in c["delta"].get("tool_calls", ())]
    assert parts and all(p["index"] == 0 for p in parts)
    assert sum("id" in p for p in parts) == 1, "the call is opened exactly once"
    assert not any(c["delta"].get("content") for e in events for c in e["choices"])
    [finish] = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    return parts[0]["function"]["name"], "".join(p["function"].get("arguments", "") for p in parts), finish


def streamed_text(events: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])


# --------------------------------------------------------------------------- named tool choice


def test_named_tool_call(tailor_server: TailorServer, tools_tenant: TenantKeys, model: str) -> None:
    c = tailor_server.sdk(tools_tenant)
    raw = c.chat.completions.with_raw_response.parse(
        model=model, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice=NAMED, **GENERATION
    )
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), PARAMS)
    assert isinstance(call.function.parsed_arguments, Weather)  # the SDK's own parsing agrees
    assert completion.model == model


def test_named_tool_call_streamed(tailor_server: TailorServer, tools_tenant: TenantKeys, model: str) -> None:
    body = {"model": model, "messages": QUESTION, "tools": [WEATHER_TOOL], "tool_choice": NAMED, **GENERATION}
    name, arguments, finish = streamed_call(raw_stream(tailor_server, tools_tenant, body))
    assert name == "get_weather" and finish == "stop"
    jsonschema.validate(json.loads(arguments), PARAMS)
    # The SDK's stream helper assembles the same call from the chunks.
    c = tailor_server.sdk(tools_tenant)
    with c.chat.completions.stream(
        model=model, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice=NAMED, **GENERATION
    ) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, Weather)


def test_required_with_one_tool_is_a_call(tailor_server: TailorServer, tools_tenant: TenantKeys) -> None:
    c = tailor_server.sdk(tools_tenant)
    raw = c.chat.completions.with_raw_response.create(
        model=BASE_MODEL, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="required", **GENERATION
    )
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), PARAMS)


def test_tool_result_round_trip(tailor_server: TailorServer, tools_tenant: TenantKeys, model: str) -> None:
    """The SDK's loop: call, send the result back as a `tool` message, get a text answer."""
    c = tailor_server.sdk(tools_tenant)
    first = c.chat.completions.create(
        model=model, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice=NAMED, **GENERATION
    )
    message = first.choices[0].message
    call = message.tool_calls[0]
    history = [
        *QUESTION,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18}'},
    ]
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=history, tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_tokens=24
    )
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    answer = raw.parse().choices[0].message
    # What a 135M model makes of a tool's result is its own affair; it answers in text.
    assert isinstance(answer.content, str) and answer.tool_calls is None


# --------------------------------------------------------------------------- structured outputs


def test_json_schema_strict(tailor_server: TailorServer, tools_tenant: TenantKeys, model: str) -> None:
    c = tailor_server.sdk(tools_tenant)
    raw = c.chat.completions.with_raw_response.parse(
        model=model, messages=QUESTION, response_format=Weather, **GENERATION
    )
    body = raw.http_response.json()
    validate(body, "CreateChatCompletionResponse")
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), PARAMS)
    assert isinstance(raw.parse().choices[0].message.parsed, Weather)


def test_json_schema_strict_streamed(tailor_server: TailorServer, tools_tenant: TenantKeys, model: str) -> None:
    body = {"model": model, "messages": QUESTION, "response_format": STRICT_FORMAT, **GENERATION}
    jsonschema.validate(json.loads(streamed_text(raw_stream(tailor_server, tools_tenant, body))), PARAMS)
    c = tailor_server.sdk(tools_tenant)
    with c.chat.completions.stream(model=model, messages=QUESTION, response_format=Weather, **GENERATION) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Weather)


def test_json_object(tailor_server: TailorServer, tools_tenant: TenantKeys, model: str) -> None:
    c = tailor_server.sdk(tools_tenant)
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=QUESTION, response_format={"type": "json_object"}, **GENERATION
    )
    answer = raw.http_response.json()
    validate(answer, "CreateChatCompletionResponse")
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(answer["choices"][0]["message"]["content"]), dict)
    events = raw_stream(tailor_server, tools_tenant, {**body_of(model), "response_format": {"type": "json_object"}})
    assert isinstance(json.loads(streamed_text(events)), dict)


def test_tool_choice_none_answers_in_text(tailor_server: TailorServer, tools_tenant: TenantKeys) -> None:
    c = tailor_server.sdk(tools_tenant)
    raw = c.chat.completions.with_raw_response.create(
        model=BASE_MODEL, messages=QUESTION, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="none", **GENERATION
    )
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    message = raw.parse().choices[0].message
    assert message.content and message.tool_calls is None


# --------------------------------------------------------------------------- "auto"


@pytest.mark.parametrize(
    "choice",
    [{"tool_choice": "auto"}, {}, {"tool_choice": "required", "tools": [WEATHER_TOOL, TIME_TOOL]}],
    ids=["auto", "implicit-auto", "required-over-several"],
)
def test_model_decided_calls_without_a_parser_are_400(
    tailor_server: TailorServer, tools_tenant: TenantKeys, choice: dict[str, Any]
) -> None:
    c = tailor_server.sdk(tools_tenant)
    kwargs = {"tools": [WEATHER_TOOL], **choice}
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model=BASE_MODEL, messages=QUESTION, **kwargs, **GENERATION)
    body = info.value.response.json()
    validate(body, "ErrorResponse")
    assert body["error"]["param"] == "tool_choice" and body["error"]["code"] == "tool_choice_unavailable"
    assert "TAILOR_ENGINE_TOOL_CALL_PARSER" in body["error"]["message"]


@pytest.fixture(scope="module")
def parser_server(tmp_path_factory: pytest.TempPathFactory, eval_engine: LiveEngine) -> Iterator[TailorServer]:
    # A gateway over the evaluation engine (started with the hermes parser, tests/conftest.py):
    # a child engine of its own would cost a minute of engine start for four requests.
    data_dir = tmp_path_factory.mktemp("tailor-tool-parser")
    with running_tailor(
        data_dir,
        eval_engine,
        serve_on_eval_engine=True,
        TAILOR_ENGINE_TOOL_CALL_PARSER="hermes",
        TAILOR_RUN_TRAINER="false",
    ) as server:
        yield server


def test_auto_with_a_tool_call_parser(parser_server: TailorServer) -> None:
    # Without vLLM's tool flags on its child engine, the engine itself would refuse "auto" (400).
    tenant = make_tenant(parser_server, "parsed")
    c = parser_server.sdk(tenant)
    for choice in ({"tool_choice": "auto"}, {}):
        raw = c.chat.completions.with_raw_response.create(
            model=BASE_MODEL, messages=QUESTION, tools=[WEATHER_TOOL, TIME_TOOL], **choice, **GENERATION
        )
        validate(raw.http_response.json(), "CreateChatCompletionResponse")
        assert raw.parse().choices[0].finish_reason in ("stop", "length", "tool_calls")
    body = {**body_of(BASE_MODEL), "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "auto"}
    raw_stream(parser_server, tenant, body)
    # A named function is still forced by Tailor: its arguments match, whatever the parser.
    body = {**body_of(BASE_MODEL), "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": NAMED}
    _, arguments, _ = streamed_call(raw_stream(parser_server, tenant, body))
    jsonschema.validate(json.loads(arguments), PARAMS)
