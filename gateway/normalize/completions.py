"""`/v1/completions` bodies and stream chunks as OpenAI's `CreateCompletionResponse`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .fields import JSON, add_usage, choice_index, choices, envelope, finish_reason

_COMPLETION_FINISH = frozenset({"stop", "length", "content_filter"})


def _logprobs(logprobs: Any) -> JSON | None:
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


def _normalized(body: Mapping[str, Any], *, model: str, id: str, nullable_finish: bool) -> JSON:
    def choice(item: Mapping[str, Any]) -> JSON:
        return {
            "index": choice_index(item),
            "text": item.get("text") if isinstance(item.get("text"), str) else "",
            "logprobs": _logprobs(item.get("logprobs")),
            "finish_reason": finish_reason(item.get("finish_reason"), _COMPLETION_FINISH, nullable=nullable_finish),
        }

    out = envelope(body, "text_completion", model, id)
    out["choices"] = choices(body, choice)
    # CreateCompletionResponse.usage is not nullable, so null/absent stays absent.
    add_usage(body, out)
    return out


def completion(body: Mapping[str, Any], *, model: str, id: str) -> JSON:
    """A non-stream `/v1/completions` body as a valid `CreateCompletionResponse`."""
    return _normalized(body, model=model, id=id, nullable_finish=False)


def completion_chunk(chunk: Mapping[str, Any], *, model: str, id: str) -> JSON:
    """One completions stream `data:` event (OpenAI streams `CreateCompletionResponse`).

    `finish_reason` stays null until a choice's last chunk, as OpenAI streams it, even
    though that schema types it non-null: the key is required, and inventing a reason
    for an unfinished choice would end clients' loops early.
    """
    return _normalized(chunk, model=model, id=id, nullable_finish=True)
