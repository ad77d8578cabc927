"""`/v1/chat/completions` bodies and stream chunks as OpenAI's chat schemas have them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def _calls(calls: Any, build: Callable[[Mapping[str, Any]], JSON]) -> list[JSON] | None:
    """`build` applied to each tool call that is an object; None where that leaves none
    (vLLM omits an empty list; OpenAI omits the key too when there are none)."""
    if not isinstance(calls, list):
        return None
    return [build(call) for call in calls if isinstance(call, Mapping)] or None


def _tool_call(call: Mapping[str, Any]) -> JSON:
    """A non-stream `message.tool_calls` entry: a function call with id, type and function."""
    fn = call.get("function") if isinstance(call.get("function"), Mapping) else {}
    return {"id": str(call.get("id") or ""), "type": "function", "function": _function_call(fn)}


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
    calls = _calls(msg.get("tool_calls"), _tool_call)
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


def _delta_function(fn: Mapping[str, Any]) -> JSON:
    """The part of a function (call) one stream delta carries: only the strings it has."""
    return {k: fn[k] for k in ("name", "arguments") if isinstance(fn.get(k), str)}


def _delta_tool_call(call: Mapping[str, Any]) -> JSON:
    """A stream `delta.tool_calls` entry: only `index` is required; vLLM sends nulls for the rest."""
    entry: JSON = {"index": as_int(call.get("index")) or 0}
    if isinstance(call.get("id"), str):
        entry["id"] = call["id"]
    if call.get("type") == "function":
        entry["type"] = "function"
    if isinstance(call.get("function"), Mapping):
        entry["function"] = _delta_function(call["function"])
    return entry


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
    calls = _calls(d.get("tool_calls"), _delta_tool_call)
    if calls:
        out["tool_calls"] = calls
    if isinstance(d.get("function_call"), Mapping):
        out["function_call"] = _delta_function(d["function_call"])
    return out


def _normalized(body: Mapping[str, Any], obj: str, *, model: str, id: str, stream: bool) -> JSON:
    """A whole response (each choice has a `message`) or a stream chunk (each has a `delta`)."""
    part, build = ("delta", _delta) if stream else ("message", _message)

    def choice(item: Mapping[str, Any]) -> JSON:
        return {
            "index": choice_index(item),
            part: build(item.get(part)),
            "logprobs": _logprobs(item.get("logprobs")),
            # Required; nullable in a stream only: null until the choice's last chunk.
            "finish_reason": finish_reason(item.get("finish_reason"), _CHAT_FINISH, nullable=stream),
        }

    out = envelope(body, obj, model, id)
    out["choices"] = choices(body, choice)
    if not stream:
        add_usage(body, out)
    elif "usage" in body:
        # null on intermediate chunks is what OpenAI itself sends with include_usage.
        out["usage"] = usage(body["usage"])
    copy_service_tier(body, out)
    return out


def chat_completion(body: Mapping[str, Any], *, model: str, id: str) -> JSON:
    """A non-stream `/v1/chat/completions` body as a valid `CreateChatCompletionResponse`."""
    return _normalized(body, "chat.completion", model=model, id=id, stream=False)


def chat_chunk(chunk: Mapping[str, Any], *, model: str, id: str) -> JSON:
    """One chat stream `data:` event as a valid `CreateChatCompletionStreamResponse`."""
    return _normalized(chunk, "chat.completion.chunk", model=model, id=id, stream=True)
