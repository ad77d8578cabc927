"""gateway/request_policy.py: which request fields reach the engine, in what ranges, with which salt."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from core.config import Settings
from core.errors import TailorError
from gateway.request_policy import (
    MAX_JSON_DEPTH,
    CacheSalts,
    ChatCompletionRequest,
    CompletionRequest,
    engine_fields,
    engine_payload,
)

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT: dict[str, Any] = {"model": "m", "messages": MESSAGES}
NOTHING: frozenset[str] = frozenset()


def chat_fields(allowed: frozenset[str] = NOTHING, **body: Any) -> dict[str, Any]:
    dumped = ChatCompletionRequest.model_validate({**CHAT, **body}).model_dump(exclude_unset=True)
    return engine_fields("chat", dumped, allowed)


def refusal(model: type, body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return ".".join(str(p) for p in info.value.errors()[0]["loc"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**63),
        ("seed", -(2**63) - 1),
        ("temperature", 2.5),
        ("temperature", float("nan")),
        ("top_p", 0),
        ("n", 17),
        ("presence_penalty", -3),
        ("top_logprobs", 21),
        ("logit_bias", {"not-a-token": 1}),
        ("logit_bias", {"1": 100.5}),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", ""),
        ("stop", "x" * 257),
        ("top_k", -2),
        ("min_p", 1.5),
        ("repetition_penalty", 0),
        ("min_tokens", -1),
        ("stop_token_ids", [-1]),
        ("tool_choice", "sometimes"),
        ("response_format", {"type": "grammar", "grammar": "root ::= x"}),
    ],
)
def test_out_of_range_is_refused_naming_the_field(field: str, value: Any) -> None:
    assert refusal(ChatCompletionRequest, {**CHAT, field: value}).startswith(field)


def test_completion_ranges() -> None:
    assert refusal(CompletionRequest, {"model": "m", "prompt": "p", "logprobs": 6}) == "logprobs"
    assert refusal(CompletionRequest, {"model": "m", "prompt": [[1, -5]]}).startswith("prompt")


def test_only_text_content_parts() -> None:
    image = [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}}]
    assert refusal(ChatCompletionRequest, {**CHAT, "messages": [{"role": "user", "content": image}]}) == (
        "messages.0.content"
    )
    parts = [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]
    fields = chat_fields(messages=[{"role": "user", "content": parts, "audio": None}])
    assert fields["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_tools_and_json_schema_pass_within_bounds() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fields = chat_fields(
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": True}},
    )
    assert fields["tools"] == [tool]
    assert fields["response_format"]["json_schema"]["schema"] == schema

    deep: dict[str, Any] = {}
    for _ in range(MAX_JSON_DEPTH):
        deep = {"items": deep}
    refused = {"type": "json_schema", "json_schema": {"name": "w", "schema": deep}}
    assert refusal(ChatCompletionRequest, {**CHAT, "response_format": refused}) == "response_format"
    huge = {"type": "function", "function": {"name": "f", "parameters": {"description": "x" * 100_001}}}
    assert refusal(ChatCompletionRequest, {**CHAT, "tools": [huge]}) == "tools"


def test_unknown_and_engine_only_fields_are_refused_unless_allowed() -> None:
    for name in ("priority", "cache_salt", "prompt_embeds", "guided_json", "no_such_thing"):
        with pytest.raises(TailorError) as info:
            chat_fields(**{name: 1})
        assert (info.value.status, info.value.param, info.value.code) == (400, name, "unknown_parameter")
    assert chat_fields(frozenset({"top_n_tokens"}), top_n_tokens=3)["top_n_tokens"] == 3


@pytest.mark.parametrize("value", [-100, 0, 10])
def test_priority_is_refused_even_where_the_operator_allows_extra_fields(value: int) -> None:
    # Tailor schedules batch requests after interactive ones by `priority`: a tenant's own
    # would jump the queue. Settings refuse to list it; the policy holds even if it were listed.
    with pytest.raises(TailorError) as info:
        chat_fields(frozenset({"priority", "vllm_xargs"}), priority=value)
    assert (info.value.status, info.value.param, info.value.code) == (400, "priority", "unknown_parameter")
    with pytest.raises(ValidationError, match="priority"):
        Settings(engine_allowed_extra_fields="vllm_xargs,priority")
    assert Settings(engine_allowed_extra_fields="vllm_xargs").engine_allowed_extra_fields == ["vllm_xargs"]


def test_only_a_batch_request_carries_a_priority() -> None:
    fields = chat_fields(seed=7)
    interactive = orjson.loads(engine_payload(fields, model="m", stream=False, cache_salt="s"))
    assert "priority" not in interactive
    batch = orjson.loads(engine_payload(fields, model="m", stream=False, cache_salt="s", priority=10))
    assert batch == {**interactive, "priority": 10}


def test_compatibility_fields_are_accepted_but_not_forwarded() -> None:
    fields = chat_fields(user="u", metadata={"k": "v"}, store=False, service_tier="auto", temperature=None, top_k=5)
    assert fields == {"messages": MESSAGES, "top_k": 5}


def test_client_cache_salt_where_allowed_is_bounded() -> None:
    with pytest.raises(TailorError) as info:
        chat_fields(frozenset({"cache_salt"}), cache_salt="x" * 1025)
    assert info.value.param == "cache_salt"


def test_cache_salts_are_stable_per_secret_and_distinct_per_tenant() -> None:
    a, again, other_secret = CacheSalts("s1"), CacheSalts("s1"), CacheSalts("s2")
    salt = a.for_tenant("tn-1")
    assert salt == again.for_tenant("tn-1")  # replicas and restarts agree
    assert salt not in (a.for_tenant("tn-2"), other_secret.for_tenant("tn-1"))
    assert a.for_tenant("tn-1", "mine") not in (salt, a.for_tenant("tn-2", "mine"))
    # vLLM: at most 128 characters, none of '@', '/', '\\', NUL.
    assert len(salt) <= 128 and not set(salt) & set("@/\\\x00")


def test_payload_sets_model_salt_and_usage() -> None:
    fields = chat_fields(stream=True, stream_options={"include_usage": False}, seed=7)
    body = orjson.loads(engine_payload(fields, model="av-1", stream=True, cache_salt="salt"))
    assert body == {
        "messages": MESSAGES,
        "stream": True,
        "seed": 7,
        "model": "av-1",
        "cache_salt": "salt",
        "stream_options": {"include_usage": True},
    }


def test_unencodable_allowed_field_is_400_naming_it() -> None:
    fields = chat_fields(frozenset({"vllm_xargs"}), vllm_xargs={"n": 2**64})
    with pytest.raises(TailorError) as info:
        engine_payload(fields, model="m", stream=False, cache_salt="s")
    assert (info.value.status, info.value.param) == (400, "vllm_xargs")


def test_vllm_accepts_everything_the_policy_forwards() -> None:
    """The engine's own request models take what Tailor sends, `cache_salt` included, on both routes."""
    chat_protocol = pytest.importorskip("vllm.entrypoints.openai.chat_completion.protocol")
    completion_protocol = pytest.importorskip("vllm.entrypoints.openai.completion.protocol")
    salt = CacheSalts("secret").for_tenant("tn-1")
    sampling = {
        "n": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 2**63 - 1,
        "stop": ["\n"],
        "logit_bias": {"5": -100},
        "presence_penalty": 1,
        "frequency_penalty": -1,
        "top_k": 20,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "min_tokens": 1,
        "ignore_eos": True,
        "stop_token_ids": [2],
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
        "spaces_between_special_tokens": True,
        "max_tokens": 8,
        "stream": True,
    }
    chat = chat_fields(
        **sampling,
        logprobs=True,
        top_logprobs=20,
        max_completion_tokens=8,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        reasoning_effort="low",
        parallel_tool_calls=False,
    )
    sent = orjson.loads(engine_payload(chat, model="av-1", stream=True, cache_salt=salt, priority=10))
    parsed = chat_protocol.ChatCompletionRequest.model_validate(sent)
    assert parsed.cache_salt == salt and parsed.seed == 2**63 - 1 and parsed.priority == 10
    assert parsed.response_format.json_schema.json_schema == {"type": "object"}

    dumped = CompletionRequest.model_validate({"model": "m", "prompt": "p", "logprobs": 5, **sampling})
    completion = engine_fields("completion", dumped.model_dump(exclude_unset=True), NOTHING)
    sent = orjson.loads(engine_payload(completion, model="av-1", stream=True, cache_salt=salt, priority=10))
    parsed = completion_protocol.CompletionRequest.model_validate(sent)
    assert parsed.cache_salt == salt and parsed.priority == 10
