"""OpenAI `Response` objects, built from the request and a normalised chat answer.

Plain functions over dicts, like gateway.normalize: the answer has already been made
valid there, so these only re-shape it. Every object built here is checked against OpenAI's
`Response` schema by the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.responses.items import output_message
from gateway.responses.protocol import CreateResponseRequest

JSON = dict[str, Any]

# The chat finish reasons that end a Response early, and OpenAI's name for why.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(frozen=True)
class Echo:
    """What a Response repeats of the request that created it."""

    model: str
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    previous_response_id: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    text: JSON = field(default_factory=lambda: {"format": {"type": "text"}})
    reasoning: JSON | None = None
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True
    store: bool = True
    user: str | None = None

    @classmethod
    def of(cls, req: CreateResponseRequest) -> Echo:
        text: JSON = {"format": {"type": "text"}}
        if req.text is not None:
            text = req.text.model_dump(exclude_none=True, by_alias=True)
            text.setdefault("format", {"type": "text"})
        return cls(
            model=req.model,
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            metadata=dict(req.metadata or {}),
            previous_response_id=req.previous_response_id,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            text=text,
            reasoning=req.reasoning.model_dump(exclude_none=True) if req.reasoning else None,
            tool_choice=req.tool_choice if isinstance(req.tool_choice, str) else "auto",
            parallel_tool_calls=req.parallel_tool_calls is not False,
            store=req.stored,
            user=req.user,
        )


@dataclass
class Outcome:
    """How generation ended: its text, the chat finish reason, the chat usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Mapping[str, Any] | None = None

    @property
    def incomplete_reason(self) -> str | None:
        return _INCOMPLETE.get(self.finish_reason or "")


def response(
    rid: str,
    created_at: int,
    echo: Echo,
    *,
    status: str,
    output: list[JSON],
    usage: JSON | None = None,
    incomplete_reason: str | None = None,
    error: JSON | None = None,
    completed_at: int | None = None,
) -> JSON:
    """A `Response` object (status `in_progress`, `completed`, `incomplete` or `failed`)."""
    body: JSON = {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": completed_at if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": echo.model,
        "output": output,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "previous_response_id": echo.previous_response_id,
        "reasoning": echo.reasoning,
        "service_tier": "default",
        "store": echo.store,
        "temperature": echo.temperature,
        "text": echo.text,
        "tool_choice": echo.tool_choice,
        "tools": [],
        "top_p": echo.top_p,
        "truncation": "disabled",
        "metadata": echo.metadata,
    }
    # Neither is nullable in OpenAI's schema: left out until known.
    if usage is not None:
        body["usage"] = usage
    if echo.user is not None:
        body["user"] = echo.user
    return body


def usage(chat_usage: Mapping[str, Any] | None) -> JSON | None:
    """A normalised chat `usage` as a Response's `usage`."""
    if not chat_usage:
        return None
    prompt = chat_usage.get("prompt_tokens_details") or {}
    completion = chat_usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": chat_usage.get("prompt_tokens", 0),
        "input_tokens_details": {
            "cached_tokens": prompt.get("cached_tokens", 0),
            "cache_write_tokens": prompt.get("cache_write_tokens", 0),
        },
        "output_tokens": chat_usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": completion.get("reasoning_tokens", 0)},
        "total_tokens": chat_usage.get("total_tokens", 0),
    }


def finished(rid: str, created_at: int, completed_at: int, echo: Echo, mid: str, outcome: Outcome) -> JSON:
    """The Response of an answer that ended (completed, or incomplete for its reason)."""
    reason = outcome.incomplete_reason
    status = "incomplete" if reason else "completed"
    return response(
        rid,
        created_at,
        echo,
        status=status,
        output=[output_message([outcome.text], mid, status)],
        usage=usage(outcome.usage),
        incomplete_reason=reason,
        completed_at=completed_at,
    )


def outcome_of(chat: Mapping[str, Any]) -> Outcome:
    """The outcome of a normalised non-stream chat completion (its first choice)."""
    choices = chat.get("choices") or []
    first = choices[0] if choices else {}
    message = first.get("message") or {}
    content = message.get("content")
    refusal = message.get("refusal")
    text = content if isinstance(content, str) else refusal if isinstance(refusal, str) else ""
    return Outcome(text=text, finish_reason=first.get("finish_reason"), usage=chat.get("usage"))
