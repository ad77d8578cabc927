"""Make vLLM's OpenAI-server output valid against OpenAI's published schema.

vLLM's responses are close to OpenAI's but not valid against
`openai-openapi/openapi.yaml`, and they carry engine internals. Observed on vLLM 0.32
(captured samples live in tests/fixtures/vllm_raw/):

* `null` for optional fields OpenAI types as non-null: `message.annotations`,
  `message.function_call`, `message.audio`, `usage.prompt_tokens_details`,
  `usage.completion_tokens_details`, `system_fingerprint`.
* vLLM-only extras: `stop_reason`, `token_ids`, `routed_experts`, `prompt_logprobs`,
  `prompt_token_ids`, `prompt_text`, `kv_transfer_params`, `ec_transfer_params`,
  `metrics`, `message.reasoning`. Allowed by the schema, but they expose token ids,
  prompts and engine state, so they are dropped.
* `model` is the engine-side name (a LoRA adapter id for tenant traffic), `id` is the
  engine's request id; both are replaced by the gateway's.
* chat `logprobs` lacks the required `refusal` key.
* completion `logprobs` with `echo` has `null` for the first prompt token.
* `finish_reason: "abort"` (and, per vLLM's source, `"repetition"`), not OpenAI values.
* `system_fingerprint` is `vllm-<version>-<hash>`, naming the engine and its version.
* errors: `code` is the integer HTTP status and `type` a Python-ish class name
  (`BadRequestError`, `NotFoundError`, `Bad Request`).

These functions are on the hot path (one call per stream chunk), so each builds the
output object from a fixed whitelist of keys for its object type; nothing walks the
schema at run time. They take parsed JSON and return new dicts; inputs are not mutated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from core.errors import error_type_for_status

__all__ = [
    "chat_chunk",
    "chat_completion",
    "completion",
    "completion_chunk",
    "error",
    "stream_error",
]

JSON = dict[str, Any]

_CHAT_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
_COMPLETION_FINISH = frozenset({"stop", "length", "content_filter"})

# vLLM finish reasons OpenAI does not have (vllm.v1.engine.FINISH_REASON_STRINGS is
# stop, length, abort, error, repetition):
# * "repetition": vLLM's repetition detector ended the output. Like a stop sequence, it
#   is the engine deciding the text is over, not a token budget running out -> "stop".
# * "abort": the request was cancelled (client gone, engine paused/aborted it). The text
#   is incomplete; where the schema allows null we say nothing rather than claim a
#   reason (see _UNFINISHED_REQUIRED for where it does not).
# * "error": vLLM turns it into an error event/response before serialising a choice,
#   so it should never arrive; treated like "abort" if it does.
_FINISH_ALIASES: dict[str, str | None] = {"repetition": "stop", "abort": None, "error": None}

# Non-stream choices must carry a non-null reason. "length" is the one OpenAI value that
# tells a client the text stopped before the model ended it, which is what an aborted
# or reason-less choice is.
_UNFINISHED_REQUIRED = "length"

_SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority", "fast"})
_DELTA_ROLES = frozenset({"developer", "system", "user", "assistant", "tool"})

_PROMPT_DETAIL_KEYS = (
    "audio_tokens",
    "cached_tokens",
    "text_tokens",
    "image_tokens",
    "cache_write_tokens",
)
_COMPLETION_DETAIL_KEYS = (
    "accepted_prediction_tokens",
    "audio_tokens",
    "reasoning_tokens",
    "text_tokens",
    "rejected_prediction_tokens",
)


# --------------------------------------------------------------------------- helpers


# orjson writes 64-bit integers only; anything larger cannot be a real count anyway.
_INT_LIMIT = 2**63 - 1


def _int(value: Any) -> int | None:
    """An int for JSON integer fields; bools, non-integral floats and huge numbers are not counts."""
    if type(value) is float and value.is_integer() and abs(value) <= _INT_LIMIT:
        value = int(value)
    if type(value) is int and -_INT_LIMIT <= value <= _INT_LIMIT:
        return value
    return None


def _finish(value: Any, allowed: frozenset[str], *, nullable: bool) -> str | None:
    if isinstance(value, str) and value in allowed:
        return value
    mapped = _FINISH_ALIASES.get(value) if isinstance(value, str) else None
    if mapped is not None and mapped in allowed:
        return mapped
    # Unknown, aborted or missing: no honest reason to report.
    return None if nullable else _UNFINISHED_REQUIRED


def _usage(usage: Any) -> JSON | None:
    if not isinstance(usage, Mapping):
        return None
    prompt = _int(usage.get("prompt_tokens")) or 0
    # vLLM types completion_tokens as `int | None`.
    completion = _int(usage.get("completion_tokens")) or 0
    total = _int(usage.get("total_tokens"))
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if total is not None else min(prompt + completion, _INT_LIMIT),
    }
    # vLLM sends the details as null, or with its own keys (created_cache_tokens,
    # multimodal_tokens); keep only OpenAI's integer counters.
    details = _details(usage.get("prompt_tokens_details"), _PROMPT_DETAIL_KEYS)
    if details:
        out["prompt_tokens_details"] = details
    details = _details(usage.get("completion_tokens_details"), _COMPLETION_DETAIL_KEYS)
    if details:
        out["completion_tokens_details"] = details
    return out


def _details(details: Any, keys: tuple[str, ...]) -> JSON | None:
    if not isinstance(details, Mapping):
        return None
    out = {}
    for key in keys:
        value = _int(details.get(key))
        if value is not None:
            out[key] = value
    return out


def _envelope(body: Mapping[str, Any], obj: str, model: str, id: str) -> JSON:
    created = _int(body.get("created"))
    return {
        "id": id,
        "object": obj,
        # vLLM always sets it; 0 keeps the required key an integer if it ever does not.
        "created": created if created is not None else 0,
        "model": model,
    }


def _copy_service_tier(body: Mapping[str, Any], out: JSON) -> None:
    # vLLM sends `service_tier: null`; only a real tier is worth passing on.
    # `system_fingerprint` is not copied: vLLM's is `vllm-<version>-<hash>`, which names
    # the engine and its version, and the field is deprecated by OpenAI.
    tier = body.get("service_tier")
    if isinstance(tier, str) and tier in _SERVICE_TIERS:
        out["service_tier"] = tier


# --------------------------------------------------------------------------- chat


def _chat_token_logprob(item: Mapping[str, Any]) -> JSON:
    logprob = item.get("logprob")
    return {
        "token": item.get("token") if isinstance(item.get("token"), str) else "",
        # OpenAI documents -9999.0 as "very unlikely"; vLLM uses it for -inf as well.
        "logprob": logprob if isinstance(logprob, (int, float)) else -9999.0,
        "bytes": item.get("bytes") if isinstance(item.get("bytes"), list) else None,
    }


def _chat_logprobs(logprobs: Any) -> JSON | None:
    if not isinstance(logprobs, Mapping):
        return None
    return {
        "content": _chat_token_list(logprobs.get("content")),
        # Required by OpenAI (nullable); vLLM never sends it as it has no refusals.
        "refusal": _chat_token_list(logprobs.get("refusal")),
    }


def _chat_token_list(items: Any) -> list[JSON] | None:
    if not isinstance(items, list):
        return None
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        entry = _chat_token_logprob(item)
        top = item.get("top_logprobs")
        entry["top_logprobs"] = (
            [_chat_token_logprob(t) for t in top if isinstance(t, Mapping)] if isinstance(top, list) else []
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
        out.append(
            {
                "id": str(call.get("id") or ""),
                "type": "function",
                "function": {
                    "name": str(fn.get("name") or ""),
                    "arguments": str(fn.get("arguments") or ""),
                },
            }
        )
    return out or None


def _function_call(fc: Any) -> JSON | None:
    if not isinstance(fc, Mapping):
        return None
    return {"name": str(fc.get("name") or ""), "arguments": str(fc.get("arguments") or "")}


def _chat_message(message: Any) -> JSON:
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
    fc = _function_call(msg.get("function_call"))
    if fc:
        out["function_call"] = fc
    # vLLM's annotations are null (no web search); a list is passed through as-is.
    if isinstance(msg.get("annotations"), list):
        out["annotations"] = msg["annotations"]
    if isinstance(msg.get("audio"), Mapping):
        out["audio"] = msg["audio"]
    # `reasoning`/`reasoning_content` are vLLM extensions and dropped.
    return out


def chat_completion(body: Mapping[str, Any], *, model: str, id: str) -> JSON:
    """A non-stream `/v1/chat/completions` body as a valid `CreateChatCompletionResponse`."""
    out = _envelope(body, "chat.completion", model, id)
    choices = body.get("choices")
    out["choices"] = [
        {
            "index": _int(choice.get("index")) or 0,
            "message": _chat_message(choice.get("message")),
            "logprobs": _chat_logprobs(choice.get("logprobs")),
            "finish_reason": _finish(choice.get("finish_reason"), _CHAT_FINISH, nullable=False),
        }
        for choice in (choices if isinstance(choices, list) else ())
        if isinstance(choice, Mapping)
    ]
    usage = _usage(body.get("usage"))
    if usage is not None:
        out["usage"] = usage
    _copy_service_tier(body, out)
    return out


def _delta_tool_calls(calls: Any) -> list[JSON] | None:
    """Stream `delta.tool_calls`: only `index` is required; vLLM sends nulls for the rest."""
    if not isinstance(calls, list) or not calls:
        return None
    out = []
    for call in calls:
        if not isinstance(call, Mapping):
            continue
        entry: JSON = {"index": _int(call.get("index")) or 0}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        if call.get("type") == "function":
            entry["type"] = "function"
        fn = call.get("function")
        if isinstance(fn, Mapping):
            entry["function"] = {k: fn[k] for k in ("name", "arguments") if isinstance(fn.get(k), str)}
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
    fc = d.get("function_call")
    if isinstance(fc, Mapping):
        out["function_call"] = {k: fc[k] for k in ("name", "arguments") if isinstance(fc.get(k), str)}
    return out


def chat_chunk(chunk: Mapping[str, Any], *, model: str, id: str) -> JSON:
    """One chat stream `data:` event as a valid `CreateChatCompletionStreamResponse`."""
    out = _envelope(chunk, "chat.completion.chunk", model, id)
    choices = chunk.get("choices")
    out["choices"] = [
        {
            "index": _int(choice.get("index")) or 0,
            "delta": _delta(choice.get("delta")),
            "logprobs": _chat_logprobs(choice.get("logprobs")),
            # Required, nullable: null until the choice's last chunk.
            "finish_reason": _finish(choice.get("finish_reason"), _CHAT_FINISH, nullable=True),
        }
        for choice in (choices if isinstance(choices, list) else ())
        if isinstance(choice, Mapping)
    ]
    if "usage" in chunk:
        # null on intermediate chunks is what OpenAI itself sends with include_usage.
        out["usage"] = _usage(chunk["usage"])
    _copy_service_tier(chunk, out)
    return out


# --------------------------------------------------------------------------- completions


def _completion_logprobs(logprobs: Any) -> JSON | None:
    if not isinstance(logprobs, Mapping):
        return None
    offsets = logprobs.get("text_offset")
    tokens = logprobs.get("tokens")
    token_logprobs = logprobs.get("token_logprobs")
    top = logprobs.get("top_logprobs")
    return {
        "text_offset": [o if type(o) is int else 0 for o in offsets] if isinstance(offsets, list) else [],
        # With `echo`, the first prompt token has no logprob (nothing precedes it) and
        # vLLM sends null, which the schema's `number` items reject. 0.0 keeps sums over
        # the list equal to the log-likelihood of the rest given the first token, which
        # is what the other entries mean; any negative sentinel would corrupt such sums.
        "token_logprobs": [lp if isinstance(lp, (int, float)) else 0.0 for lp in token_logprobs]
        if isinstance(token_logprobs, list)
        else [],
        "tokens": [t if isinstance(t, str) else "" for t in tokens] if isinstance(tokens, list) else [],
        # Same position, same reason: no alternatives for the first echoed token -> {}.
        "top_logprobs": [t if isinstance(t, Mapping) else {} for t in top] if isinstance(top, list) else [],
    }


def _completion_choices(choices: Any, *, nullable_finish: bool) -> list[JSON]:
    return [
        {
            "index": _int(choice.get("index")) or 0,
            "text": choice.get("text") if isinstance(choice.get("text"), str) else "",
            "logprobs": _completion_logprobs(choice.get("logprobs")),
            "finish_reason": _finish(choice.get("finish_reason"), _COMPLETION_FINISH, nullable=nullable_finish),
        }
        for choice in (choices if isinstance(choices, list) else ())
        if isinstance(choice, Mapping)
    ]


def completion(body: Mapping[str, Any], *, model: str, id: str) -> JSON:
    """A non-stream `/v1/completions` body as a valid `CreateCompletionResponse`."""
    out = _envelope(body, "text_completion", model, id)
    out["choices"] = _completion_choices(body.get("choices"), nullable_finish=False)
    usage = _usage(body.get("usage"))
    if usage is not None:
        out["usage"] = usage
    return out


def completion_chunk(chunk: Mapping[str, Any], *, model: str, id: str) -> JSON:
    """One completions stream `data:` event (OpenAI streams `CreateCompletionResponse`).

    `finish_reason` stays null until a choice's last chunk, as OpenAI streams it, even
    though that schema types it non-null: the key is required, and inventing a reason
    for an unfinished choice would end clients' loops early.
    """
    out = _envelope(chunk, "text_completion", model, id)
    out["choices"] = _completion_choices(chunk.get("choices"), nullable_finish=True)
    usage = _usage(chunk.get("usage"))
    if usage is not None:
        # CreateCompletionResponse.usage is not nullable, so null/absent stays absent.
        out["usage"] = usage
    return out


# --------------------------------------------------------------------------- errors

# vLLM's 404 for an unknown model ends with "Valid aliases: a, b." listing every name
# the engine serves, i.e. other tenants' adapters. Drop that sentence.
_ALIASES_RE = re.compile(r"\s*Valid aliases:[^\n]*$")
_MAX_MESSAGE = 2000


def _error_fields(body: object) -> tuple[str | None, Any, Any]:
    """(message, param, code) from whatever the engine sent."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        return body.strip() or None, None, None
    if not isinstance(body, Mapping):
        return None, None, None
    inner = body.get("error")
    if isinstance(inner, Mapping):  # current vLLM and OpenAI: {"error": {...}}
        return _text(inner.get("message")), inner.get("param"), inner.get("code")
    if isinstance(inner, str):  # {"error": "..."} from some proxies
        return inner, None, None
    if "message" in body:  # older vLLM: {"object": "error", "message", "type", "code"}
        return _text(body.get("message")), body.get("param"), body.get("code")
    if "detail" in body:  # FastAPI's own HTTPException / validation errors
        return _text(body.get("detail")), None, None
    return None, None, None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def error(body: object, status: int, *, replace: Mapping[str, str] | None = None) -> JSON:
    """Any engine error body as a valid OpenAI `ErrorResponse` for HTTP `status`.

    `replace` maps engine-internal names (adapter ids, paths) to what the client may
    see; it is applied to the message and param.
    """
    message, param, code = _error_fields(body)
    message = _ALIASES_RE.sub("", message or "")
    if not message:
        message = f"The inference engine returned an error (HTTP {status})."
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    param = param if isinstance(param, str) and param else None
    if replace:
        for internal, public in replace.items():
            if internal:
                message = message.replace(internal, public)
                if param is not None:
                    param = param.replace(internal, public)
    return {
        "error": {
            "message": message,
            "type": error_type_for_status(status),
            "param": param,
            # OpenAI codes are strings ("model_not_found"); vLLM repeats the HTTP
            # status as an int there, which says nothing the status does not.
            "code": code if isinstance(code, str) and code and not code.isdigit() else None,
        }
    }


def stream_error(chunk: Mapping[str, Any], *, replace: Mapping[str, str] | None = None) -> JSON | None:
    """The OpenAI error body if this stream `data:` event is an engine error, else None.

    Once a stream's 200 is sent, vLLM reports failures as one more event,
    `data: {"error": {"message", "type", "param", "code": <http status>}}`, followed by
    `data: [DONE]`. OpenAI streams errors the same way (an `error` object in a data
    event), so the event is kept, just normalised.
    """
    inner = chunk.get("error")
    if not isinstance(inner, Mapping) or "choices" in chunk:
        return None
    status = _int(inner.get("code"))
    if status is None or not 400 <= status <= 599:
        status = 500
    return error(chunk, status, replace=replace)
