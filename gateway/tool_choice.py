"""What a chat request's `tools` and `tool_choice` ask of the engine, and calls Tailor forces itself.

vLLM 0.32 serves `tool_choice` other than "none" only with a tool-call parser loaded
(`--enable-auto-tool-choice --tool-call-parser NAME`), and even then a named function is
constrained only by parsers that support it (with `hermes`, the arguments of a forced call
come out as free text). So:

- "none", or no tools: forwarded as sent (the chat template still sees the tools).
- a named function (`{"type": "function", "function": {"name": ...}}`), and "required" when
  there is one tool: Tailor forces the call. The engine generates the function's arguments
  under a JSON-schema constraint (the `response_format` vLLM serves without any flag) and
  the answer is reshaped into that one tool call, so the arguments always parse and match
  the function's parameters, whatever parser the engine has or lacks. `finish_reason` is
  "stop" for a named function and "tool_calls" for "required", as OpenAI reports them.
- "auto" (which tools without tool_choice mean) and "required" over several tools: the
  model decides what to call, in its own format, which only the engine's parser can read.
  With `TAILOR_ENGINE_TOOL_CALL_PARSER` set they are forwarded; without it they get a 400
  that says so, instead of the engine's message about its command-line flags.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from core.errors import TailorError, bad_request

JSON = dict[str, Any]
UNAVAILABLE = "tool_choice_unavailable"
# A function declared without parameters takes none (OpenAI: an empty parameter list).
_NO_PARAMETERS: JSON = {"type": "object", "properties": {}}


def plan(fields: JSON, tool_call_parser: str | None) -> tuple[JSON, ForcedCall | None]:
    """The engine's fields for these client fields, and the call Tailor forces, if any.

    Raises a 400 (param `tool_choice`) for what neither the engine nor Tailor can serve.
    """
    tools = fields.get("tools") or []
    choice = fields.get("tool_choice")
    if not tools:
        if choice is not None and choice != "none":
            raise bad_request(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                code="invalid_value",
                param="tool_choice",
            )
        return fields, None
    if choice == "none":
        return fields, None
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return _forced(fields, _function(tools, name), finish_reason="stop")
    if choice == "required" and len(tools) == 1:
        return _forced(fields, tools[0]["function"], finish_reason="tool_calls")
    if tool_call_parser is None:
        raise _unavailable(choice)
    return fields, None


def _function(tools: list[JSON], name: str) -> JSON:
    for tool in tools:
        if tool["function"]["name"] == name:
            return tool["function"]
    raise bad_request(
        f"Invalid value for 'tool_choice': no function named {name!r} in 'tools'.",
        code="invalid_value",
        param="tool_choice",
    )


def _forced(fields: JSON, function: JSON, *, finish_reason: str) -> tuple[JSON, ForcedCall]:
    schema = function.get("parameters") or _NO_PARAMETERS
    engine = {k: v for k, v in fields.items() if k != "parallel_tool_calls"}
    # "none" keeps the tools in the prompt (for templates that render them) without asking
    # the engine to parse calls. The constraint replaces any response_format the client
    # sent: a forced call has no content for that format to apply to.
    engine["tool_choice"] = "none"
    engine["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": function["name"], "schema": schema, "strict": True},
    }
    return engine, ForcedCall(name=function["name"], finish_reason=finish_reason)


def _unavailable(choice: Any) -> TailorError:
    asked = '"required" over several tools' if choice == "required" else '"auto"'
    implicit = ' (tools without tool_choice mean "auto")' if choice is None else ""
    return bad_request(
        f"tool_choice {asked}{implicit} lets the model decide which tools to call, which needs an engine that "
        "parses tool calls out of the model's output; this deployment has no tool-call parser configured (operator "
        'setting TAILOR_ENGINE_TOOL_CALL_PARSER). Send tool_choice "none", or name the function to call: '
        '{"type": "function", "function": {"name": "..."}}.',
        code=UNAVAILABLE,
        param="tool_choice",
    )


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ForcedCall:
    """One function call the answer is reshaped into: its content is the call's arguments."""

    name: str
    finish_reason: str  # what a choice that ended normally ("stop") reports

    def answer(self, body: JSON) -> JSON:
        """A normalised non-stream chat completion with each choice's content as the call."""
        for choice in body.get("choices") or ():
            message = choice["message"]
            message["tool_calls"] = [
                {
                    "id": new_call_id(),
                    "type": "function",
                    "function": {"name": self.name, "arguments": message.get("content") or ""},
                }
            ]
            message["content"] = None
            choice["finish_reason"] = self._finish(choice["finish_reason"])
        return body

    def stream(self) -> ForcedCallStream:
        return ForcedCallStream(self)

    def _finish(self, reason: str | None) -> str | None:
        # "length" (arguments cut short) and null (not finished) are kept as they are.
        return self.finish_reason if reason == "stop" else reason


@dataclass
class ForcedCallStream:
    """The same reshaping for one stream, chunk by chunk: the first delta of each choice
    opens the call (id, type, name), later content arrives as argument fragments."""

    call: ForcedCall
    _opened: set[int] = field(default_factory=set)

    def chunk(self, chunk: JSON) -> JSON:
        for choice in chunk.get("choices") or ():
            delta = choice["delta"]
            if "content" in delta or "role" in delta:
                self._reshape(choice["index"], delta)
            choice["finish_reason"] = self.call._finish(choice["finish_reason"])
        return chunk

    def _reshape(self, index: int, delta: JSON) -> None:
        arguments = delta.pop("content", None) or ""
        if index not in self._opened:
            self._opened.add(index)
            # As OpenAI streams a call: the opening delta names it and says content is null.
            delta["content"] = None
            delta["tool_calls"] = [
                {
                    "index": 0,
                    "id": new_call_id(),
                    "type": "function",
                    "function": {"name": self.call.name, "arguments": arguments},
                }
            ]
        elif arguments:
            delta["tool_calls"] = [{"index": 0, "function": {"arguments": arguments}}]
