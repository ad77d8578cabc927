"""Tools and tool_choice: what reaches the engine, and the calls Tailor forces itself.

Engine answers are real vLLM 0.32 output (tests/fixtures/vllm_raw/): `chat_json_schema*`
were captured with exactly the engine request a forced call sends (tool_choice "none" and
the function's parameters as a json_schema response_format), `chat_stream_tool_call_named`
is vLLM's own streamed tool call (engine started with `--tool-call-parser hermes`).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from adapters.supervisor import EngineLaunch
from core.config import Settings
from core.errors import TailorError
from gateway import normalize, tool_choice
from tests.gateway.gateway_world import (
    ADMIN,
    CHAT,
    Gateway,
    answer_with,
    chunks,
    error_of,
    raw_json,
    raw_sse,
    stream_of,
)
from tests.gateway.module_gateway import module_gateway
from tests.openai_schema import validate

PARAMS = raw_json("chat_json_schema")["request"]["json"]["response_format"]["json_schema"]["schema"]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": PARAMS}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def sse_events(name: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in raw_sse(name).splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def refusal(fields: dict[str, Any], parser: str | None = None) -> TailorError:
    with pytest.raises(TailorError) as info:
        tool_choice.plan(fields, parser)
    assert info.value.status == 400 and info.value.param == "tool_choice"
    return info.value


# --------------------------------------------------------------------------- the plan


def test_no_tools_or_tool_choice_none_is_forwarded_as_sent() -> None:
    for fields in ({"messages": []}, {"tools": [WEATHER], "tool_choice": "none"}, {"tool_choice": "none"}):
        assert tool_choice.plan(fields, None) == (fields, None)


def test_named_function_becomes_a_json_schema_constraint_on_its_parameters() -> None:
    fields = {
        "tools": [TIME, WEATHER],
        "tool_choice": NAMED,
        "parallel_tool_calls": True,
        "response_format": {"type": "json_object"},
        "temperature": 0,
    }
    engine, forced = tool_choice.plan(fields, None)
    assert forced == tool_choice.ForcedCall(name="get_weather", finish_reason="stop")
    assert engine == {
        "tools": [TIME, WEATHER],  # still in the prompt, for templates that render tools
        "tool_choice": "none",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "get_weather", "schema": PARAMS, "strict": True},
        },
        "temperature": 0,
    }
    assert fields["tool_choice"] == NAMED  # the client's fields are not changed


def test_named_function_is_forced_by_tailor_even_where_the_engine_has_a_parser() -> None:
    # vLLM's own named calls are constrained only by some parsers (not hermes).
    _, forced = tool_choice.plan({"tools": [WEATHER], "tool_choice": NAMED}, "hermes")
    assert forced is not None and forced.name == "get_weather"


def test_function_without_parameters_takes_an_empty_object() -> None:
    bare = {"type": "function", "function": {"name": "ping"}}
    engine, _ = tool_choice.plan(
        {"tools": [bare], "tool_choice": {"type": "function", "function": {"name": "ping"}}}, None
    )
    assert engine["response_format"]["json_schema"]["schema"] == {"type": "object", "properties": {}}


def test_required_with_one_tool_is_forced_and_finishes_with_tool_calls() -> None:
    engine, forced = tool_choice.plan({"tools": [WEATHER], "tool_choice": "required"}, None)
    assert forced == tool_choice.ForcedCall(name="get_weather", finish_reason="tool_calls")
    assert engine["tool_choice"] == "none"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"tools": [WEATHER]}, 'tools without tool_choice mean "auto"'),
        ({"tools": [WEATHER], "tool_choice": "auto"}, 'tool_choice "auto"'),
        ({"tools": [WEATHER, TIME], "tool_choice": "required"}, '"required" over several tools'),
    ],
)
def test_model_decided_calls_without_a_parser_are_a_clear_400(fields: dict[str, Any], words: str) -> None:
    err = refusal(fields)
    assert err.code == "tool_choice_unavailable"
    assert words in err.message and "TAILOR_ENGINE_TOOL_CALL_PARSER" in err.message
    validate(err.body(), "ErrorResponse")


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [WEATHER]},
        {"tools": [WEATHER], "tool_choice": "auto"},
        {"tools": [WEATHER, TIME], "tool_choice": "required"},
    ],
)
def test_model_decided_calls_go_to_an_engine_with_a_parser_as_sent(fields: dict[str, Any]) -> None:
    assert tool_choice.plan(fields, "hermes") == (fields, None)


@pytest.mark.parametrize(
    "fields",
    [
        {"tool_choice": "auto"},
        {"tool_choice": NAMED},
        {"tools": [], "tool_choice": "required"},
        {"tools": [TIME], "tool_choice": NAMED},  # no such function among the tools
    ],
)
def test_tool_choice_that_names_nothing_to_call_is_400(fields: dict[str, Any]) -> None:
    assert refusal(fields, "hermes").code == "invalid_value"


# --------------------------------------------------------------------------- reshaping answers


def _normalised_body(name: str = "chat_json_schema") -> dict[str, Any]:
    return normalize.chat_completion(raw_json(name)["body"], model="m", id="chatcmpl-1")


def test_forced_answer_is_one_tool_call_whose_arguments_match_the_parameters() -> None:
    body = tool_choice.ForcedCall("get_weather", "stop").answer(_normalised_body())
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"  # OpenAI's reason for a named call
    message = choice["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert call["id"].startswith("call_") and len(call["id"]) > 10
    jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMS)


def test_forced_answer_reasons_required_and_cut_short() -> None:
    required = tool_choice.ForcedCall("get_weather", "tool_calls")
    assert required.answer(_normalised_body())["choices"][0]["finish_reason"] == "tool_calls"
    body = _normalised_body()
    body["choices"][0]["finish_reason"] = "length"
    assert required.answer(body)["choices"][0]["finish_reason"] == "length"  # arguments incomplete


@pytest.mark.parametrize("capture", ["chat_stream_json_schema", "chat_stream_json_schema_n2"])
def test_forced_stream_opens_one_call_per_choice_and_streams_its_arguments(capture: str) -> None:
    stream = tool_choice.ForcedCall("get_weather", "stop").stream()
    out = [stream.chunk(normalize.chat_chunk(e, model="m", id="chatcmpl-1")) for e in sse_events(capture)]
    calls: dict[int, dict[str, Any]] = {}
    finished: dict[int, str] = {}
    for chunk in out:
        validate(chunk, "CreateChatCompletionStreamResponse")
        for choice in chunk["choices"]:
            delta = choice["delta"]
            assert delta.get("content") is None
            for part in delta.get("tool_calls", ()):
                assert part["index"] == 0
                if "id" in part:
                    assert choice["index"] not in calls, "a call is opened once"
                    calls[choice["index"]] = {"id": part["id"], "name": part["function"]["name"], "arguments": ""}
                calls[choice["index"]]["arguments"] += part["function"]["arguments"]
            if choice["finish_reason"]:
                finished[choice["index"]] = choice["finish_reason"]
    assert sorted(calls) == sorted(finished) == sorted({c["index"] for e in sse_events(capture) for c in e["choices"]})
    assert len({c["id"] for c in calls.values()}) == len(calls)
    for index, call in calls.items():
        assert call["name"] == "get_weather" and finished[index] == "stop"
        jsonschema.validate(json.loads(call["arguments"]), PARAMS)
    assert out[-1]["choices"] == [] and out[-1]["usage"]["completion_tokens"] > 0  # usage passes untouched


def test_vllm_streamed_tool_calls_are_normalised_to_the_schema() -> None:
    """What an engine with a parser streams ("auto", "required" over several tools)."""
    raw = sse_events("chat_stream_tool_call_named")
    out = [normalize.chat_chunk(e, model="m", id="chatcmpl-1") for e in raw]
    for chunk in out:
        validate(chunk, "CreateChatCompletionStreamResponse")
    parts = [p for c in out for ch in c["choices"] for p in ch["delta"].get("tool_calls", ())]
    assert parts[0]["id"].startswith("chatcmpl-tool-") and parts[0]["function"] == {"name": "get_weather"}
    assert "".join(p["function"].get("arguments", "") for p in parts) == '"Paris"'


# --------------------------------------------------------------------------- through the gateway


shared = module_gateway("gateway-tools")


@pytest.mark.asyncio(loop_scope="module")
async def test_named_call_through_the_gateway(gw: Gateway) -> None:
    gw.fake.script.append(answer_with(200, raw_json("chat_json_schema")["body"]))
    r = await gw.chat(tools=[WEATHER], tool_choice=NAMED)
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    [call] = body["choices"][0]["message"]["tool_calls"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMS)
    sent = gw.fake.completions()[0].body
    assert sent["tool_choice"] == "none" and sent["response_format"]["json_schema"]["schema"] == PARAMS
    [row] = await gw.rows()
    assert row.status_code == 200 and row.request["tool_choice"] == NAMED  # the log keeps what the client sent


@pytest.mark.asyncio(loop_scope="module")
async def test_named_call_streamed_through_the_gateway(gw: Gateway) -> None:
    gw.fake.script.append(stream_of(raw_sse("chat_stream_json_schema").encode(), piece=5))
    r = await gw.chat(tools=[WEATHER], tool_choice="required", stream=True)
    assert r.status_code == 200, r.text
    parts = [p for c in chunks(r) for ch in c["choices"] for p in ch["delta"].get("tool_calls", ())]
    assert parts[0]["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads("".join(p["function"]["arguments"] for p in parts)), PARAMS)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_forced_call_on_another_tenants_adapter_is_404(gw: Gateway) -> None:
    gw.register_adapter("caller")
    other = f"other-{gw.tenant_id}"
    assert (await gw.http.post("/admin/tenants", json={"name": other}, headers=ADMIN)).status_code == 201
    r = await gw.http.post(f"/admin/tenants/{other}/keys", json={}, headers=ADMIN)
    foreign = {"authorization": f"Bearer {r.json()['key']}"}
    body = {**CHAT, "model": "caller", "tools": [WEATHER], "tool_choice": NAMED}
    error_of(await gw.http.post("/v1/chat/completions", json=body, headers=foreign), 404, param="model")
    assert gw.fake.loads() == [] and gw.fake.completions() == []


@pytest.mark.asyncio(loop_scope="module")
async def test_auto_without_a_parser_is_400_before_the_engine(gw: Gateway) -> None:
    err = error_of(await gw.chat(tools=[WEATHER]), 400, param="tool_choice")
    assert err["code"] == "tool_choice_unavailable"
    assert gw.fake.completions() == []
    [row] = await gw.rows()
    assert row.status_code == 400


@pytest.mark.asyncio(loop_scope="module")
async def test_auto_with_a_parser_reaches_the_engine_as_sent(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gw.services.settings, "engine_tool_call_parser", "hermes")
    r = await gw.chat(tools=[WEATHER], tool_choice="auto")
    assert r.status_code == 200, r.text
    sent = gw.fake.completions()[0].body
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "auto" and "response_format" not in sent


@pytest.mark.asyncio(loop_scope="module")
async def test_tool_history_and_response_formats_are_forwarded(gw: Gateway) -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": PARAMS, "strict": True}}
    for extra in ({"response_format": {"type": "json_object"}}, {"response_format": schema}):
        r = await gw.chat(messages=history, tools=[WEATHER], tool_choice="none", **extra)
        assert r.status_code == 200, r.text
    sent = [s.body for s in gw.fake.completions()]
    assert sent[0]["messages"][1]["tool_calls"][0]["id"] == "call_1"
    assert sent[0]["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}
    assert [s["response_format"] for s in sent] == [{"type": "json_object"}, schema]


# --------------------------------------------------------------------------- the engine's flags


def _launch(**overrides: Any) -> EngineLaunch:
    settings = Settings(engine_urls=["http://e.test"], **overrides)
    return EngineLaunch.from_settings(settings, port=1234)


def test_child_engine_writes_compact_json_unless_the_operator_says_otherwise() -> None:
    command = _launch().command()
    at = command.index("--structured-outputs-config")
    assert json.loads(command[at + 1]) == {"backend": "xgrammar", "disable_any_whitespace": True}
    # vLLM keeps the last of repeated config flags: the operator's extra arguments come after.
    override = ["--structured-outputs-config", '{"backend": "auto"}']
    command = _launch(engine_extra_args=override).command()
    assert command[-2:] == override and command.index("--structured-outputs-config") == at


def test_child_engine_gets_vllms_tool_flags_only_when_a_parser_is_set() -> None:
    command = _launch(engine_tool_call_parser="hermes").command()
    at = command.index("--enable-auto-tool-choice")
    assert command[at : at + 3] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert "--tool-call-parser" not in _launch().command()
    assert _launch(engine_tool_call_parser=" ").tool_call_parser is None


@pytest.mark.parametrize("name", ["--api-key", "hermes --x", "a" * 65, "her/mes"])
def test_a_parser_name_cannot_smuggle_other_arguments(name: str) -> None:
    with pytest.raises(ValueError, match="engine_tool_call_parser"):
        Settings(engine_tool_call_parser=name)


def test_unset_parser_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_ENGINE_TOOL_CALL_PARSER", "")
    assert Settings().engine_tool_call_parser is None
