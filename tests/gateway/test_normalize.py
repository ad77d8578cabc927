"""gateway.normalize against real vLLM output and OpenAI's published schema.

The captured engine output is described in tests/gateway/vllm_captures.py.

Every test checks both sides: the raw vLLM payload is invalid (so the normaliser is
needed and the check can fail) and the normalised one is valid.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from jsonschema import ValidationError

from gateway import normalize
from tests.gateway.vllm_captures import ADAPTER, PUBLIC_MODEL, load_events, load_record, schema_error
from tests.openai_schema import COMPLETION_STREAM, schema_names, validate

GATEWAY_ID = "chatcmpl-tailor-0001"

# Keys vLLM adds that expose engine state; none may survive normalisation.
LEAKY_KEYS = (
    "stop_reason",
    "token_ids",
    "prompt_token_ids",
    "prompt_logprobs",
    "prompt_text",
    "kv_transfer_params",
    "ec_transfer_params",
    "routed_experts",
    "metrics",
    "reasoning",
    "system_fingerprint",
)


def _assert_no_leaks(out: Any) -> None:
    text = json.dumps(out)
    assert ADAPTER not in text
    assert "vllm" not in text.lower()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            leaked = set(node) & set(LEAKY_KEYS)
            assert not leaked, f"engine-only keys survived: {leaked}"
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)


def _raw(obj: str, choice: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An engine object of type `obj` with one choice, whose logprobs and finish_reason are null
    unless `choice` says otherwise."""
    return {
        "id": "x",
        "object": obj,
        "created": 1,
        "model": ADAPTER,
        "choices": [{"index": 0, "logprobs": None, "finish_reason": None, **choice}],
        **extra,
    }


def _normalized_body(
    name: str, normalizer: Callable[..., dict[str, Any]], schema: str, obj: str, *, raw_fault: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A captured non-stream body and its normalised form, once the raw one fails `schema` at
    `raw_fault` and the normalised one is valid, unmutated input, the gateway's, and clean."""
    raw = load_record(name)["body"]
    before = copy.deepcopy(raw)
    assert raw_fault in schema_error(raw, schema)

    out = normalizer(raw, model=PUBLIC_MODEL, id=GATEWAY_ID)

    validate(out, schema)
    assert raw == before, "input must not be mutated"
    assert (out["id"], out["model"], out["object"]) == (GATEWAY_ID, PUBLIC_MODEL, obj)
    _assert_no_leaks(out)
    return raw, out


def _normalized_stream(
    events: list[dict[str, Any]], normalizer: Callable[..., dict[str, Any]], schema: str, obj: str
) -> list[dict[str, Any]]:
    """Each captured stream event normalised, once every one is valid, the gateway's, and clean."""
    outs = [normalizer(e, model=PUBLIC_MODEL, id=GATEWAY_ID) for e in events]
    for out in outs:
        validate(out, schema)
        assert (out["id"], out["model"], out["object"]) == (GATEWAY_ID, PUBLIC_MODEL, obj)
        _assert_no_leaks(out)
    return outs


# --------------------------------------------------------------------------- the helper


def test_schema_helper_knows_the_components_the_gateway_returns() -> None:
    wanted = {
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
        "CreateCompletionResponse",
        "ListModelsResponse",
        "Model",
        "ErrorResponse",
        "DeleteModelResponse",
        COMPLETION_STREAM,
    }
    assert wanted <= schema_names()
    model = {"id": "m", "object": "model", "created": 1, "owned_by": "tailor"}
    validate({"object": "list", "data": [model]}, "ListModelsResponse")
    validate({"id": "m", "object": "model", "deleted": True}, "DeleteModelResponse")
    assert "owned_by" in schema_error({"id": "m", "object": "model", "created": 1}, "Model")


def test_schema_helper_turns_openapi_nullable_into_null_acceptance() -> None:
    # Stream `usage` and `logprobs` are `nullable: true` in the file, not anyOf-null.
    chunk = _raw("chat.completion.chunk", {"delta": {}}, usage=None)
    validate(chunk, "CreateChatCompletionStreamResponse")
    chunk["choices"][0]["finish_reason"] = "abort"
    assert "finish_reason" in schema_error(chunk, "CreateChatCompletionStreamResponse")


def test_schema_helper_completion_stream_variant_only_relaxes_finish_reason() -> None:
    chunk = _raw("text_completion", {"text": "a"})
    validate(chunk, COMPLETION_STREAM)
    assert "finish_reason" in schema_error(chunk, "CreateCompletionResponse")
    chunk["usage"] = None  # still not nullable in the stream variant
    schema_error(chunk, COMPLETION_STREAM)


# --------------------------------------------------------------------------- chat


CHAT_BODIES = ["chat", "chat_n2", "chat_logprobs", "chat_stop", "chat_lora", "chat_abort"]


@pytest.mark.parametrize("name", CHAT_BODIES)
def test_chat_completion_real_bodies(name: str) -> None:
    raw, out = _normalized_body(
        name, normalize.chat_completion, "CreateChatCompletionResponse", "chat.completion", raw_fault="annotations"
    )
    assert out["created"] == raw["created"]
    assert [c["message"]["content"] for c in out["choices"]] == [c["message"]["content"] for c in raw["choices"]]
    assert {k: out["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == {
        k: raw["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }


def test_chat_finish_reasons_are_kept_when_openai_has_them() -> None:
    raw = load_record("chat_n2")["body"]
    out = normalize.chat_completion(raw, model=PUBLIC_MODEL, id=GATEWAY_ID)
    assert [c["finish_reason"] for c in out["choices"]] == ["stop", "length"]
    assert [c["index"] for c in out["choices"]] == [0, 1]


def test_chat_abort_becomes_length_in_a_full_response() -> None:
    raw = load_record("chat_abort")["body"]
    assert raw["choices"][0]["finish_reason"] == "abort"
    out = normalize.chat_completion(raw, model=PUBLIC_MODEL, id=GATEWAY_ID)
    # Non-stream finish_reason is required and non-null: "length" = text is incomplete.
    assert out["choices"][0]["finish_reason"] == "length"


def test_chat_logprobs_gain_the_required_refusal_key() -> None:
    raw = load_record("chat_logprobs")["body"]
    raw_logprobs = raw["choices"][0]["logprobs"]
    assert "refusal" not in raw_logprobs
    assert "logprobs: 'refusal' is a required property" in schema_error(raw, "CreateChatCompletionResponse")
    out = normalize.chat_completion(raw, model=PUBLIC_MODEL, id=GATEWAY_ID)
    logprobs = out["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None
    assert logprobs["content"] == raw_logprobs["content"]  # values untouched


def test_lora_response_does_not_name_the_adapter() -> None:
    raw = load_record("chat_lora")["body"]
    assert raw["model"] == ADAPTER
    out = normalize.chat_completion(raw, model=PUBLIC_MODEL, id=GATEWAY_ID)
    assert out["model"] == PUBLIC_MODEL
    _assert_no_leaks(out)


CHAT_STREAMS = [
    "chat_stream",
    "chat_stream_usage",
    "chat_stream_logprobs",
    "chat_stream_lora",
    "chat_stream_abort",
]


@pytest.mark.parametrize("name", CHAT_STREAMS)
def test_chat_stream_real_chunks(name: str) -> None:
    events = load_events(name)
    failures = []
    for event in events:
        try:
            validate(event, "CreateChatCompletionStreamResponse")
        except ValidationError as exc:
            failures.append(str(exc))
    # vLLM's chunks are mostly valid (extras are allowed); the ones that are not show why.
    if name in ("chat_stream_logprobs", "chat_stream_abort"):
        assert failures, f"expected raw {name} chunks to violate the schema"

    outs = _normalized_stream(
        events, normalize.chat_chunk, "CreateChatCompletionStreamResponse", "chat.completion.chunk"
    )

    def text(chunks: list[dict[str, Any]]) -> str:
        return "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"])

    assert text(outs) == text(events) != ""


def test_chat_stream_usage_chunk_is_kept_and_clean() -> None:
    events = load_events("chat_stream_usage")
    last = normalize.chat_chunk(events[-1], model=PUBLIC_MODEL, id=GATEWAY_ID)
    assert last["choices"] == []
    assert last["usage"] == {k: events[-1]["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    # Without include_usage vLLM sends no usage key, and neither do we.
    assert all("usage" not in normalize.chat_chunk(e, model="m", id="i") for e in load_events("chat_stream"))


def test_chat_stream_logprobs_chunks_fail_raw_for_missing_refusal() -> None:
    event = next(e for e in load_events("chat_stream_logprobs") if e["choices"][0]["logprobs"])
    assert "refusal" in schema_error(event, "CreateChatCompletionStreamResponse")
    out = normalize.chat_chunk(event, model=PUBLIC_MODEL, id=GATEWAY_ID)
    assert out["choices"][0]["logprobs"]["refusal"] is None


# --------------------------------------------------------------------------- completions


COMPLETION_BODIES = ["completion", "completion_logprobs_echo", "completion_lora"]


@pytest.mark.parametrize("name", COMPLETION_BODIES)
def test_completion_real_bodies(name: str) -> None:
    raw, out = _normalized_body(
        name, normalize.completion, "CreateCompletionResponse", "text_completion", raw_fault="prompt_tokens_details"
    )
    assert [c["text"] for c in out["choices"]] == [c["text"] for c in raw["choices"]]
    assert [c["finish_reason"] for c in out["choices"]] == ["length"]


def test_completion_echo_logprobs_fill_the_first_prompt_token() -> None:
    raw = load_record("completion_logprobs_echo")["body"]
    raw_lp = raw["choices"][0]["logprobs"]
    assert raw_lp["token_logprobs"][0] is None and raw_lp["top_logprobs"][0] is None
    assert "token_logprobs[0]" in schema_error(raw, "CreateCompletionResponse")
    lp = normalize.completion(raw, model=PUBLIC_MODEL, id=GATEWAY_ID)["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] == 0.0 and lp["top_logprobs"][0] == {}
    assert lp["token_logprobs"][1:] == raw_lp["token_logprobs"][1:]
    assert lp["tokens"] == raw_lp["tokens"] and lp["text_offset"] == raw_lp["text_offset"]


COMPLETION_STREAMS = [
    "completion_stream_usage",
    "completion_stream_logprobs",
    "completion_stream_abort",
]


@pytest.mark.parametrize("name", COMPLETION_STREAMS)
def test_completion_stream_real_chunks(name: str) -> None:
    events = load_events(name)
    outs = _normalized_stream(events, normalize.completion_chunk, COMPLETION_STREAM, "text_completion")
    for out in outs:
        if all(c["finish_reason"] is not None for c in out["choices"]):
            # Final and usage chunks meet even the strict non-stream schema.
            validate(out, "CreateCompletionResponse")
    assert "".join(c["text"] for o in outs for c in o["choices"]) == "".join(
        c["text"] for e in events for c in e["choices"]
    )


def test_completion_stream_usage_chunk() -> None:
    last = load_events("completion_stream_usage")[-1]
    assert "system_fingerprint" in last and last["choices"] == []
    out = normalize.completion_chunk(last, model=PUBLIC_MODEL, id=GATEWAY_ID)
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}


@pytest.mark.parametrize(
    ("name", "normalizer", "schema"),
    [
        ("chat_stream_abort", normalize.chat_chunk, "CreateChatCompletionStreamResponse"),
        ("completion_stream_abort", normalize.completion_chunk, COMPLETION_STREAM),
    ],
)
def test_stream_abort_ends_with_null_finish_reason(
    name: str, normalizer: Callable[..., dict[str, Any]], schema: str
) -> None:
    last = load_events(name)[-1]
    assert last["choices"][0]["finish_reason"] == "abort"
    assert "finish_reason" in schema_error(last, schema)
    out = normalizer(last, model=PUBLIC_MODEL, id=GATEWAY_ID)
    assert out["choices"][0]["finish_reason"] is None


# --------------------------------------------------------------------------- shapes vLLM can
# produce that this model/config did not (built from vLLM 0.32's protocol classes)


def _chat_body(**choice: Any) -> dict[str, Any]:
    usage = {
        "prompt_tokens": 3,
        "total_tokens": 5,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 2, "created_cache_tokens": 1, "multimodal_tokens": None},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    return _raw("chat.completion", {"finish_reason": "stop", **choice}, usage=usage)


def test_tool_calls_and_usage_details_from_vllm_protocol() -> None:
    body = _chat_body(
        message={
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "reasoning": "thinking...",
            "tool_calls": [
                {
                    "id": "chatcmpl-tool-1",
                    "type": "function",
                    "function": {"name": "f", "arguments": "{}"},
                }
            ],
        },
        finish_reason="tool_calls",
    )
    out = normalize.chat_completion(body, model=PUBLIC_MODEL, id=GATEWAY_ID)
    validate(out, "CreateChatCompletionResponse")
    msg = out["choices"][0]["message"]
    assert msg["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert "reasoning" not in msg and msg["content"] is None
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_tool_call_delta_drops_nulls() -> None:
    call = {"id": None, "type": None, "index": 0, "function": {"name": None, "arguments": '{"a"'}}
    chunk = _raw("chat.completion.chunk", {"delta": {"reasoning": None, "tool_calls": [call]}})
    schema_error(chunk, "CreateChatCompletionStreamResponse")
    out = normalize.chat_chunk(chunk, model=PUBLIC_MODEL, id=GATEWAY_ID)
    validate(out, "CreateChatCompletionStreamResponse")
    assert out["choices"][0]["delta"] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}


@pytest.mark.parametrize(
    ("reason", "full", "chunk"),
    [
        ("stop", "stop", "stop"),
        ("length", "length", "length"),
        ("repetition", "stop", "stop"),
        ("abort", "length", None),
        ("error", "length", None),
        ("mystery", "length", None),
        (None, "length", None),
    ],
)
def test_finish_reason_mapping(reason: str | None, full: str, chunk: str | None) -> None:
    body = _chat_body(message={"role": "assistant", "content": "x"}, finish_reason=reason)
    out = normalize.chat_completion(body, model="m", id="i")
    validate(out, "CreateChatCompletionResponse")
    assert out["choices"][0]["finish_reason"] == full
    comp = _raw("text_completion", {"text": "x", "finish_reason": reason})
    assert normalize.completion(comp, model="m", id="i")["choices"][0]["finish_reason"] == full
    assert normalize.completion_chunk(comp, model="m", id="i")["choices"][0]["finish_reason"] == chunk


def test_usage_counts_become_ints() -> None:
    body = _chat_body(message={"role": "assistant", "content": "x"})
    body["usage"] = {
        "prompt_tokens": 3.0,
        "total_tokens": None,
        "completion_tokens": None,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    out = normalize.chat_completion(body, model="m", id="i")
    validate(out, "CreateChatCompletionResponse")
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
