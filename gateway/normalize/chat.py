"""`/v1/chat/completions` bodies and stream chunks as OpenAI's chat schemas have them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .fields import JSON, add_usage, as_int, choice_index, choices, copy_service_tier, envelope, finish_reason, usage

_CHAT_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
_DELTA_ROLES = frozenset({"developer", "system", "user", "assistant", "tool"})


def _token_logprob(item: Mapping[str, Any]) -> JSON:
    logprob = item.get("logprob")
    return {
        "token": item.get("token") if isinstance(item.get("token"), str) else "",
        # OpenAI documents -9999.0 as "very unlikely"; vLLM uses it for -inf as well.
        "logprob": logprob if isinstance(logprob, (int, float)) else -9999.0,
        "bytes": item.get("bytes") if isinstance(item.get("bytes"), list) else None,
    }


def _logprobs(logprobs: Any) -> JSON | None:
    if not isinstance(logprobs, Mapping):
        return None
    return {
        "content": _token_list(logprobs.get("content")),
        # Required by OpenAI (nullable); vLLM never sends it as it has no refusals.
        "refusal": _token_list(logprobs.get("refusal")),
    }


def _token_list(items: Any) -> list[JSON] | None:
    if not isinstance(items, list):
        return None
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        entry = _token_logprob(item)
        top = item.get("top_logprobs")
        entry["top_logprobs"] = (
            [_token_logprob(t) for t in top if isinstance(t, Mapping)] if isinstance(top, list) else []
        )
        out.append(entry)
    return out


def _tool_calls(calls: Any) -> list[JSON] | None:
    """Non-stream `message.tool_calls`: function calls with id, type and function."""
    if not isinstance(calls, list) or not calls:
        # vLLM omits an empty list; OpenAI omits the key too when there are none.
        return None
    out = []
    for call in calls:
        if not isinstance(call, Mapping):
            continue
        fn = call.get("function") if isinstance(call.get("function"), Mapping) else {}
        out.append({"id": str(call.get("id") or ""), "type": "function", "function": _function_call(fn)})
    return out or None


def _function_call(fn: Mapping[str, Any]) -> JSON:
    """A whole function (call) of a message: both strings present, empty where vLLM has none."""
    return {"name": str(fn.get("name") or ""), "arguments": str(fn.get("arguments") or "")}


def _message(message: Any) -> JSON:
    msg = message if isinstance(message, Mapping) else {}
    content = msg.get("content")
    refusal = msg.get("refusal")
    out: JSON = {
        "role": "assistant",
        "content": content if isinstance(content, str) else None,
        "refusal": refusal if isinstance(refusal, str) else None,
    }
    calls = _tool_calls(msg.get("tool_calls"))
    if calls:
        out["tool_calls"] = calls
    if isinstance(msg.get("function_call"), Mapping):
        out["function_call"] = _function_call(msg["function_call"])
    # vLLM's annotations are null (no web search); a list is passed through as-is.
    if isinstance(msg.get("annotations"), list):
        out["annotations"] = msg["annotations"]
    if isinstance(msg.get("audio"), Mapping):
        out["audio"] = msg["audio"]
    # `reasoning`/`reasoning_content` are vLLM extensions and dropped.
    return out


def _choice(choice: Mapping[str, Any]) -> JSON:
    return {
        "index": choice_index(choice),
        "message": _message(choice.get("message")),
        "logprobs": _logprobs(choice.get("logprobs")),
        "finish_reason": finish_reason(choice.get("finish_reason"), _CHAT_FINISH, nullable=False),
    }


def chat_completion(body: Mapping[str, Any], *, model: str, id: str) -> JSON:
    """A non-stream `/v1/chat/completions` body as a valid `CreateChatCompletionResponse`."""
    out = envelope(body, "chat.completion", model, id)
    out["choices"] = choices(body, _choice)
    add_usage(body, out)
    copy_service_tier(body, out)
    return out


def _delta_function(fn: Mapping[str, Any]) -> JSON:
    """The part of a function (call) one stream delta carries: only the strings it has."""
    return {k: fn[k] for k in ("name", "arguments") if isinstance(fn.get(k), str)}


def _delta_tool_calls(calls: Any) -> list[JSON] | None:
    """Stream `delta.tool_calls`: only `index` is required; vLLM sends nulls for the rest."""
    if not isinstance(calls, list) or not calls:
        return None
    out = []
    for call in calls:
        if not isinstance(call, Mapping):
            continue
        entry: JSON = {"index": as_int(call.get("index")) or 0}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        if call.get("type") == "function":
            entry["type"] = "function"
        if isinstance(call.get("function"), Mapping):
            entry["function"] = _delta_function(call["function"])
        out.append(entry)
    return out or None


def _delta(delta: Any) -> JSON:
    d = delta if isinstance(delta, Mapping) else {}
    out: JSON = {}
    if isinstance(d.get("role"), str) and d["role"] in _DELTA_ROLES:
        out["role"] = d["role"]
    if "content" in d:
        content = d["content"]
        out["content"] = content if isinstance(content, str) else None
    if isinstance(d.get("refusal"), str):
        out["refusal"] = d["refusal"]
    calls = _delta_tool_calls(d.get("tool_calls"))
    if calls:
        out["tool_calls"] = calls
    if isinstance(d.get("function_call"), Mapping):
        out["function_call"] = _delta_function(d["function_call"])
    return out


def _chunk_choice(choice: Mapping[str, Any]) -> JSON:
    return {
        "index": choice_index(choice),
        "delta": _delta(choice.get("delta")),
        "logprobs": _logprobs(choice.get("logprobs")),
        # Required, nullable: null until the choice's last chunk.
        "finish_reason": finish_reason(choice.get("finish_reason"), _CHAT_FINISH, nullable=True),
    }


def chat_chunk(chunk: Mapping[str, Any], *, model: str, id: str) -> JSON:
    """One chat stream `data:` event as a valid `CreateChatCompletionStreamResponse`."""
    out = envelope(chunk, "chat.completion.chunk", model, id)
    out["choices"] = choices(chunk, _chunk_choice)
    if "usage" in chunk:
        # null on intermediate chunks is what OpenAI itself sends with include_usage.
        out["usage"] = usage(chunk["usage"])
    copy_service_tier(chunk, out)
    return out
