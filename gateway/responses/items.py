"""Conversation items: the `input` of a request as stored items, and items as chat messages.

Input is checked and rebuilt here, so what is stored and sent holds only what is
understood: messages (OpenAI's easy form `{"role", "content"}` or `{"type": "message", ...}`)
whose content is a string or text parts. Images, files and audio would make the engine
fetch URLs or read files, as on chat completions: refused. Tool calls and their outputs,
item references and reasoning items are refused too (no tools are offered here; earlier
turns are continued with `previous_response_id`).

Every item gets a fresh id (`msg_...`), even one the client sent with an id: ids must be
unique within a conversation for `input_items` pagination. Stored items are valid
`ItemResource`s: user, system and developer messages as input messages (`input_text`
parts), assistant messages as output messages (`output_text` parts).

To the engine, a conversation is chat messages: the request's `instructions` first, as a
system message, then every earlier turn's input and output items, then this request's
input. `developer` messages become `system` ones, which every chat template knows; a
message's text parts are joined by newlines, as vLLM joins them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from core.errors import TailorError, bad_request
from core.ids import new_id

JSON = dict[str, Any]

INPUT_ROLES = frozenset({"user", "system", "developer"})
# What each role's text parts may be called on input (an assistant turn sent back as input
# carries `output_text` parts, as the API returned it).
_TEXT_PARTS = {"input": frozenset({"input_text"}), "assistant": frozenset({"output_text", "input_text"})}
_REFUSED_ITEMS = {
    "item_reference": "Item references are not supported; continue a conversation with previous_response_id.",
    "function_call": "Function tools are not supported on /v1/responses by this gateway.",
    "function_call_output": "Function tools are not supported on /v1/responses by this gateway.",
    "reasoning": "Reasoning items are not supported by this gateway.",
}


def item_id() -> str:
    return new_id("msg", "_")


def _invalid(message: str, param: str) -> TailorError:
    return bad_request(message, code="invalid_value", param=param)


def input_items(value: str | Sequence[Any]) -> list[JSON]:
    """The request's `input` as stored items; a 400 names the first part it cannot take."""
    if isinstance(value, str):
        return [input_message("user", [value])]
    return [_item(raw, f"input[{i}]") for i, raw in enumerate(value)]


def _item(raw: Any, param: str) -> JSON:
    if not isinstance(raw, Mapping):
        raise _invalid("Each input item must be an object.", param)
    kind = raw.get("type", "message")
    if kind != "message":
        message = _REFUSED_ITEMS.get(str(kind), f"Input items of type {kind!r} are not supported by this gateway.")
        raise bad_request(message, code="unsupported_value", param=f"{param}.type")
    role = raw.get("role")
    if role != "assistant" and role not in INPUT_ROLES:
        raise _invalid(f"role must be one of user, system, developer or assistant (got {role!r}).", f"{param}.role")
    texts = _texts(raw.get("content"), "assistant" if role == "assistant" else "input", f"{param}.content")
    return output_message(texts, item_id(), "completed") if role == "assistant" else input_message(role, texts)


def _texts(content: Any, side: str, param: str) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list) or not content:
        raise _invalid("content must be a string or a non-empty list of text parts.", param)
    allowed = _TEXT_PARTS[side]
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "refusal" and side == "assistant" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
            continue
        if kind not in allowed or not isinstance(part.get("text"), str):
            wanted = " or ".join(f'{{"type": "{t}", "text": "..."}}' for t in sorted(allowed))
            raise bad_request(
                f"Only text content parts ({wanted}) are accepted; images, files and audio are not offered.",
                code="unsupported_value",
                param=f"{param}[{i}]",
            )
        texts.append(part["text"])
    return texts


def input_message(role: str, texts: Iterable[str]) -> JSON:
    return {
        "id": item_id(),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": [{"type": "input_text", "text": t} for t in texts],
    }


def output_text_part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def output_message(texts: Iterable[str], mid: str, status: str) -> JSON:
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text_part(t) for t in texts],
    }


def text_of(item: Mapping[str, Any]) -> str:
    """A message item's text as the engine sees it: its parts joined by newlines."""
    parts = item.get("content") or []
    return "\n".join(str(p.get("text", p.get("refusal", ""))) for p in parts if isinstance(p, Mapping))


def chat_message(item: Mapping[str, Any]) -> JSON:
    role = item.get("role")
    return {"role": "system" if role == "developer" else role, "content": text_of(item)}


def chat_messages(instructions: str | None, items: Iterable[Mapping[str, Any]]) -> list[JSON]:
    """A conversation's items, after the instructions, as chat messages for the engine."""
    head = [{"role": "system", "content": instructions}] if instructions else []
    return head + [chat_message(item) for item in items if item.get("type") == "message"]
