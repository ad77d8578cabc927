"""What every normalised object shares: integer counts, finish reasons, usage, the envelope
(id, object, created, model), the service tier and the walk over `choices`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

JSON = dict[str, Any]

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

# orjson writes 64-bit integers only; anything larger cannot be a real count anyway.
INT_LIMIT = 2**63 - 1


def as_int(value: Any) -> int | None:
    """An int for JSON integer fields; bools, non-integral floats and huge numbers are not counts."""
    if type(value) is float and value.is_integer() and abs(value) <= INT_LIMIT:
        value = int(value)
    if type(value) is int and -INT_LIMIT <= value <= INT_LIMIT:
        return value
    return None


def finish_reason(value: Any, allowed: frozenset[str], *, nullable: bool) -> str | None:
    if isinstance(value, str) and value in allowed:
        return value
    mapped = _FINISH_ALIASES.get(value) if isinstance(value, str) else None
    if mapped is not None and mapped in allowed:
        return mapped
    # Unknown, aborted or missing: no honest reason to report.
    return None if nullable else _UNFINISHED_REQUIRED


def usage(value: Any) -> JSON | None:
    if not isinstance(value, Mapping):
        return None
    prompt = as_int(value.get("prompt_tokens")) or 0
    # vLLM types completion_tokens as `int | None`.
    completion = as_int(value.get("completion_tokens")) or 0
    total = as_int(value.get("total_tokens"))
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if total is not None else min(prompt + completion, INT_LIMIT),
    }
    # vLLM sends the details as null, or with its own keys (created_cache_tokens,
    # multimodal_tokens); keep only OpenAI's integer counters.
    details = _details(value.get("prompt_tokens_details"), _PROMPT_DETAIL_KEYS)
    if details:
        out["prompt_tokens_details"] = details
    details = _details(value.get("completion_tokens_details"), _COMPLETION_DETAIL_KEYS)
    if details:
        out["completion_tokens_details"] = details
    return out


def add_usage(body: Mapping[str, Any], out: JSON) -> None:
    """Usage where the schema types it non-null: a missing or null one stays absent."""
    found = usage(body.get("usage"))
    if found is not None:
        out["usage"] = found


def _details(details: Any, keys: tuple[str, ...]) -> JSON | None:
    if not isinstance(details, Mapping):
        return None
    out = {}
    for key in keys:
        value = as_int(details.get(key))
        if value is not None:
            out[key] = value
    return out


def envelope(body: Mapping[str, Any], obj: str, model: str, id: str) -> JSON:
    created = as_int(body.get("created"))
    return {
        "id": id,
        "object": obj,
        # vLLM always sets it; 0 keeps the required key an integer if it ever does not.
        "created": created if created is not None else 0,
        "model": model,
    }


def copy_service_tier(body: Mapping[str, Any], out: JSON) -> None:
    # vLLM sends `service_tier: null`; only a real tier is worth passing on.
    # `system_fingerprint` is not copied: vLLM's is `vllm-<version>-<hash>`, which names
    # the engine and its version, and the field is deprecated by OpenAI.
    tier = body.get("service_tier")
    if isinstance(tier, str) and tier in _SERVICE_TIERS:
        out["service_tier"] = tier


def choices(body: Mapping[str, Any], build: Callable[[Mapping[str, Any]], JSON]) -> list[JSON]:
    """`build` applied to each choice of `body` that is an object; anything else is dropped."""
    found = body.get("choices")
    return [build(choice) for choice in (found if isinstance(found, list) else ()) if isinstance(choice, Mapping)]


def choice_index(choice: Mapping[str, Any]) -> int:
    return as_int(choice.get("index")) or 0
