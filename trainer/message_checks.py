"""The checks of an example's messages and texts, shared by training files, feedback
import and distillation settings: OpenAI's chat message format, text only.

Each raises `InvalidExample` whose text names the field path ("messages[2].role must be
one of ..."); callers prefix the line or the parameter.
"""

from __future__ import annotations

from typing import Any

from trainer.records import Message

ROLES = ("system", "user", "assistant")
# Longest text accepted in one feedback field or imported message: enough for long
# answers, small enough that one bad client cannot fill the database with a few calls.
MAX_TEXT_CHARS = 32_000


class InvalidExample(ValueError):
    """A malformed example. `str()` names the field path; callers prefix the line."""


# OpenAI fine-tuning fields Tailor cannot train on; refused by name instead of being
# silently dropped, which would train on a different conversation than the one sent.
_UNSUPPORTED_MESSAGE_KEYS = ("tool_calls", "function_call", "tool_call_id", "refusal", "audio")


def check_messages(value: Any, where: str = "messages", *, max_chars: int | None = None) -> tuple[Message, ...]:
    """Validate an OpenAI chat message list (text only) and return it as role/content pairs.

    Raises InvalidExample with a path such as "messages[2].role must be one of ...".
    """
    if not isinstance(value, list) or not value:
        raise InvalidExample(f"{where} must be a non-empty list of messages")
    return tuple(check_message(msg, f"{where}[{i}]", max_chars=max_chars) for i, msg in enumerate(value))


def check_message(msg: Any, here: str, *, max_chars: int | None = None) -> Message:
    """One text message of a list (`here` names it in errors, e.g. "messages[2]")."""
    if not isinstance(msg, dict):
        raise InvalidExample(f"{here} must be an object with role and content")
    role = msg.get("role")
    if role not in ROLES:
        raise InvalidExample(f"{here}.role must be one of {', '.join(ROLES)} (got {role!r})")
    for key in _UNSUPPORTED_MESSAGE_KEYS:
        if msg.get(key) is not None:
            raise InvalidExample(f"{here}.{key} is not supported (text messages only)")
    content = msg.get("content")
    if not isinstance(content, str):
        raise InvalidExample(f"{here}.content must be a string (got {_kind(content)})")
    if role == "assistant" and not content.strip():
        raise InvalidExample(f"{here}.content must not be empty for an assistant message")
    if max_chars is not None and len(content) > max_chars:
        raise InvalidExample(f"{here}.content is longer than {max_chars} characters")
    weight = msg.get("weight")
    if weight is not None and (isinstance(weight, bool) or weight != 1):
        # OpenAI's weight 0 excludes a turn from the loss; our SFT loop trains every
        # assistant turn, so accepting it would silently train what was excluded.
        raise InvalidExample(f"{here}.weight {weight!r} is not supported (only 1)")
    return {"role": role, "content": content}


def check_text(value: Any, name: str, *, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """A bounded, non-blank optional text field."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidExample(f"{name} must be a string (got {_kind(value)})")
    if not value.strip():
        raise InvalidExample(f"{name} must not be empty")
    if len(value) > max_chars:
        raise InvalidExample(f"{name} is longer than {max_chars} characters")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
