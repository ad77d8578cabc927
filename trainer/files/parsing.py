"""Checking a training file (JSON lines) line by line, and reading its examples.

A file is checked when it is uploaded, so a bad example is refused with its line number at
once instead of failing a training job minutes later. These formats are accepted, one per
file:

- "sft" (OpenAI chat fine-tuning): `{"messages": [{"role": "system"|"user"|"assistant",
  "content": str}, ...]}` with at least one assistant message; also with OpenAI's
  function-calling fields (`tools`, assistant `tool_calls`, `tool` turns,
  `parallel_tool_calls`), trained in the text form trainer.tool_examples documents;
- "preference" (OpenAI DPO): `{"input": {"messages": [...]}, "preferred_output":
  [{"role": "assistant", "content": str}], "non_preferred_output": [...]}`;
- "prompts" (Tailor's distillation inputs, OpenAI's reinforcement rows): `{"messages": [...]}`
  ending with a user turn, plus any other fields (a reinforcement job's grader reads them as
  `{{ item.<field> }}`); a teacher or the trained model answers. Earlier assistant turns (a
  conversation so far, or demonstrations, as OpenAI's reinforcement rows allow) are part of
  the prompt. Such a line is also a valid chat example (its last user turn, unanswered, is
  dropped), so a file is read as prompts only when none of its lines is a chat example
  ending with an answer;
- "rated" (Tailor's KTO examples, thumbs up or down): `{"messages": [..., {"role":
  "assistant", "content": str}], "label": true | false}`: the last assistant message is the
  answer, rated good (true) or bad (false).

Blank lines are skipped (a trailing newline is not an example).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import TailorError, bad_request
from trainer import tool_examples
from trainer.jsonl import JsonLine, JsonLineError, json_lines
from trainer.message_checks import InvalidExample, check_messages
from trainer.records import Message, PreferenceRecord, PromptRecord, RatedRecord, SFTRecord

MAX_FILE_LINES = 100_000

Kind = Literal["sft", "preference", "prompts", "rated"]
_KIND_NAMES = {
    "sft": "a chat (sft) example",
    "preference": "a preference example",
    "prompts": "a prompt (no answer)",
    "rated": "a rated (kto) example",
}
_PREFERENCE_KEYS = {"input", "preferred_output", "non_preferred_output"}
_UNSUPPORTED_KEYS = ("tools", "functions", "parallel_tool_calls")
_CONVERSATION: Literal["conversation"] = "conversation"


@dataclass(frozen=True)
class ParsedFile:
    kind: Kind
    records: list[SFTRecord] | list[PreferenceRecord] | list[PromptRecord]


def _file_error(message: str, *, code: str = "invalid_file") -> TailorError:
    return bad_request(message, code=code, param="file")


def _lines(data: bytes) -> Iterator[JsonLine]:
    """trainer.jsonl's lines, its errors as this module's 400s."""
    try:
        yield from json_lines(data)
    except JsonLineError as exc:
        raise _file_error(str(exc)) from None


def parse_jsonl(data: bytes, *, max_lines: int = MAX_FILE_LINES) -> ParsedFile:
    """Validate a fine-tuning file and return its examples; TailorError 400 names the line."""
    kind: Kind | None = None
    first_line = 0
    records: list[Any] = []
    # Conversations ending with a user turn, before the file's kind is known.
    pending: list[tuple[int, dict[str, Any]]] = []
    for line in _lines(data):
        if len(records) + len(pending) >= max_lines:
            raise _file_error(f"file has more than {max_lines} examples", code="file_too_large")
        lineno, obj = line.lineno, line.value
        if not isinstance(obj, dict):
            raise _file_error(f"line {lineno}: must be a JSON object, one example per line")
        line_kind = _kind_of(obj)
        if line_kind is None:
            raise _file_error(
                f'line {lineno}: expected a chat example {{"messages": [...]}} or a preference example '
                '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}'
            )
        if line_kind == _CONVERSATION:
            # A chat ending with a user turn: a chat example in a file of them, else a prompt.
            if kind is None:
                pending.append((lineno, obj))
                continue
            line_kind = "sft" if kind == "sft" else "prompts"
        if kind is None:
            kind, first_line = line_kind, lineno
            if pending:
                if kind not in ("sft", "prompts"):
                    raise _mixed(lineno, kind, pending[0][0], "prompts")
                first_line = pending[0][0]
                records.extend(_parse(n, o, kind) for n, o in pending)
                pending.clear()
        elif line_kind != kind:
            raise _mixed(lineno, line_kind, first_line, kind)
        records.append(_parse(lineno, obj, line_kind))
    if pending:  # every line a conversation ending with a user turn: prompts to answer
        kind, records = "prompts", [_parse(n, o, "prompts") for n, o in pending]
    if kind is None:
        raise _file_error("file is empty: expected one JSON example per line", code="empty_file")
    return ParsedFile(kind=kind, records=records)


def _mixed(lineno: int, kind: Kind, first_line: int, first_kind: Kind) -> TailorError:
    return _file_error(
        f"line {lineno}: is {_KIND_NAMES[kind]} but line {first_line} is "
        f"{_KIND_NAMES[first_kind]}; a file holds one kind of example"
    )


def _parse(lineno: int, obj: dict[str, Any], kind: Kind) -> Any:
    try:
        return _PARSERS[kind](obj)
    except InvalidExample as exc:
        raise _file_error(f"line {lineno}: {exc}") from None


def _kind_of(obj: dict[str, Any]) -> Kind | Literal["conversation"] | None:
    if "messages" in obj and "label" in obj and not (_PREFERENCE_KEYS & obj.keys()):
        return "rated"
    if "messages" in obj and not (_PREFERENCE_KEYS & obj.keys()):
        # An input to answer ends with a user turn; with earlier answers it may also be a chat
        # example (the file decides). Anything else is read as a chat example, whose
        # validation names what is wrong with it.
        messages = obj["messages"]
        if not (
            isinstance(messages, list)
            and bool(messages)
            and isinstance(messages[-1], dict)
            and messages[-1].get("role") == "user"
        ):
            return "sft"
        answered = any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)
        return _CONVERSATION if answered else "prompts"
    if _PREFERENCE_KEYS & obj.keys() and "messages" not in obj:
        return "preference"
    return None


def _refuse_unsupported(obj: dict[str, Any]) -> None:
    for key in _UNSUPPORTED_KEYS:
        if obj.get(key):
            raise InvalidExample(f"{key} is not supported here (tools are trained in chat (sft) examples only)")


def _sft(obj: dict[str, Any]) -> SFTRecord:
    if tool_examples.has_tools(obj):
        if obj.get("functions"):
            raise InvalidExample("functions is not supported (use tools)")
        return _answered(tool_examples.text_turns(obj))
    _refuse_unsupported(obj)
    return _answered(check_messages(obj.get("messages"), "messages"))


def _answered(messages: tuple[Message, ...]) -> SFTRecord:
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise InvalidExample("messages must contain at least one assistant message")
    # Turns after the last answer carry no loss; the record ends with its target.
    return SFTRecord(messages=messages[: last + 1])


def _prompt(obj: dict[str, Any]) -> PromptRecord:
    _refuse_unsupported(obj)
    # The other fields are what a reinforcement job's grader reads ({{ item.<field> }}).
    return PromptRecord.from_json({**obj, "messages": check_messages(obj.get("messages"), "messages")})


def _preference(obj: dict[str, Any]) -> PreferenceRecord:
    _refuse_unsupported(obj)
    missing = [k for k in ("input", "preferred_output", "non_preferred_output") if k not in obj]
    if missing:
        raise InvalidExample(f"{missing[0]} is required in a preference example")
    inp = obj["input"]
    if not isinstance(inp, dict):
        raise InvalidExample("input must be an object with messages")
    _refuse_unsupported(inp)
    prompt = check_messages(inp.get("messages"), "input.messages")
    if prompt[-1]["role"] != "user":
        raise InvalidExample(f"input.messages must end with a user message (got {prompt[-1]['role']!r})")
    chosen = _single_answer(obj["preferred_output"], "preferred_output")
    rejected = _single_answer(obj["non_preferred_output"], "non_preferred_output")
    if chosen == rejected:
        raise InvalidExample("preferred_output and non_preferred_output are identical")
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected)


def _rated(obj: dict[str, Any]) -> RatedRecord:
    label = obj.get("label")
    if not isinstance(label, bool):
        raise InvalidExample(f"label must be true (a good answer) or false (a bad one), got {label!r}")
    _refuse_unsupported(obj)
    answered = _answered(check_messages(obj.get("messages"), "messages"))
    if answered.prompt[-1]["role"] != "user":
        raise InvalidExample("the rated answer must follow a user message")
    return RatedRecord(prompt=answered.prompt, completion=answered.answer, label=label)


_PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "sft": _sft,
    "preference": _preference,
    "prompts": _prompt,
    "rated": _rated,
}


def _single_answer(value: Any, where: str) -> str:
    messages = check_messages(value, where)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise InvalidExample(f"{where} must be exactly one assistant message")
    return messages[0]["content"]
