"""Chat examples with tools: OpenAI's fine-tuning format, checked, then written out as text turns.

A line of a chat (sft) training file may carry what OpenAI's function-calling fine-tuning
format has: `tools` (function definitions), assistant turns with `tool_calls` (content may
then be null), `tool` turns answering a call by `tool_call_id`, and `parallel_tool_calls`.

Tailor trains such examples in one documented text form, the one Qwen2.5-style chat
templates render and vLLM's `hermes` tool-call parser reads back:

- the tools go to the end of the system message (one is added if there is none):
  `# Tools` ... `<tools>` one JSON function definition per line `</tools>` ... ;
- an assistant call is its content (if any), then per call
  `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`;
- consecutive `tool` turns become one user turn of `<tool_response>\n...\n</tool_response>`
  blocks, in order.

Why text rather than each model's own template: many instruct templates (SmolLM2's among
them) ignore `tools` and `tool_calls`, and the evaluation that judges a run generates on the
held-out prompts through vLLM's chat API; turns that are plain text render the same way in
training, in evaluation and for every template. An adapter trained this way answers with
`<tool_call>` blocks, which an engine started with `TAILOR_ENGINE_TOOL_CALL_PARSER=hermes`
turns into `tool_calls` under `tool_choice: "auto"`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from trainer.message_checks import InvalidExample, check_message
from trainer.records import Message

MAX_TOOLS = 128  # as OpenAI's API
MAX_TOOLS_CHARS = 100_000  # all definitions of one example, as JSON
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_KEYS = {"name", "description", "parameters", "strict"}

TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


def has_tools(example: dict[str, Any]) -> bool:
    """Whether an example uses any part of the function-calling format."""
    messages = example.get("messages")
    return bool(example.get("tools")) or (
        isinstance(messages, list)
        and any(isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages)
    )


def text_turns(example: dict[str, Any]) -> tuple[Message, ...]:
    """The example's conversation as plain system/user/assistant turns (the form above).

    Raises InvalidExample naming the field, as trainer.message_checks' checks do.
    """
    tools = _tools(example.get("tools"))
    parallel = example.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidExample("parallel_tool_calls must be true or false")
    names = {t["function"]["name"] for t in tools}
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidExample("messages must be a non-empty list of messages")
    turns: list[Message] = []
    calls: set[str] = set()
    after_result = False  # the last turn holds tool results: the next result joins it
    for i, msg in enumerate(messages):
        here = f"messages[{i}]"
        if isinstance(msg, dict) and msg.get("role") == "tool":
            result = _tool_result(msg, here, calls)
            if after_result:
                turns[-1] = {"role": "user", "content": turns[-1]["content"] + "\n" + result}
            else:
                turns.append({"role": "user", "content": result})
            after_result = True
            continue
        if isinstance(msg, dict) and msg.get("role") == "assistant" and msg.get("tool_calls") is not None:
            turns.append(_calling(msg, here, names, calls, parallel is not False))
        else:
            # Every other turn is an ordinary text message and checked as such.
            turns.append(check_message(msg, here))
        after_result = False
    return _with_tools(turns, tools)


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise InvalidExample(f"tools must be a list of at most {MAX_TOOLS} function definitions")
    seen: set[str] = set()
    out = []
    for i, tool in enumerate(value):
        here = f"tools[{i}]"
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise InvalidExample(f'{here} must be {{"type": "function", "function": {{...}}}}')
        if not set(fn) <= _TOOL_KEYS:
            raise InvalidExample(f"{here}.function has unknown keys: {', '.join(sorted(set(fn) - _TOOL_KEYS))}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidExample(f"{here}.function.name must be 1 to 64 letters, digits, '_' or '-'")
        if name in seen:
            raise InvalidExample(f"{here}.function.name {name!r} is defined twice")
        seen.add(name)
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise InvalidExample(f"{here}.function.description must be a string")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise InvalidExample(f"{here}.function.parameters must be a JSON schema object")
        out.append({"type": "function", "function": {k: fn[k] for k in fn if fn[k] is not None}})
    if len(json.dumps(out)) > MAX_TOOLS_CHARS:
        raise InvalidExample(f"tools are longer than {MAX_TOOLS_CHARS} characters as JSON")
    return out


def _calling(msg: dict[str, Any], here: str, names: set[str], calls: set[str], parallel: bool) -> Message:
    content = msg.get("content")
    if content is not None and not isinstance(content, str):
        raise InvalidExample(f"{here}.content must be a string or null")
    if msg.get("function_call") is not None:
        raise InvalidExample(f"{here}.function_call is not supported (use tool_calls)")
    weight = msg.get("weight")
    if weight is not None and (isinstance(weight, bool) or weight != 1):
        raise InvalidExample(f"{here}.weight {weight!r} is not supported (only 1)")
    raw = msg["tool_calls"]
    if not isinstance(raw, list) or not raw:
        raise InvalidExample(f"{here}.tool_calls must be a non-empty list")
    if len(raw) > 1 and not parallel:
        raise InvalidExample(f"{here} has {len(raw)} tool calls but parallel_tool_calls is false")
    blocks = []
    for j, call in enumerate(raw):
        where = f"{here}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(fn, dict):
            raise InvalidExample(f'{where} must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}')
        call_id, name = call.get("id"), fn.get("name")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidExample(f"{where}.id must be a non-empty string")
        if not isinstance(name, str) or not name:
            raise InvalidExample(f"{where}.function.name must be a non-empty string")
        if names and name not in names:
            raise InvalidExample(f"{where}.function.name {name!r} is not one of the example's tools")
        blocks.append(_call_block(name, _arguments(fn.get("arguments"), where)))
        calls.add(call_id)
    text = "\n".join(blocks)
    return {"role": "assistant", "content": f"{content.strip()}\n{text}" if content and content.strip() else text}


def _arguments(value: Any, where: str) -> dict[str, Any]:
    # OpenAI sends arguments as a JSON string; an object is accepted as well.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidExample(f"{where}.function.arguments must be a JSON object (as a string)") from None
    if not isinstance(value, dict):
        raise InvalidExample(f"{where}.function.arguments must be a JSON object (as a string)")
    return value


def _call_block(name: str, arguments: dict[str, Any]) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


def _tool_result(msg: dict[str, Any], here: str, calls: set[str]) -> str:
    content, call_id = msg.get("content"), msg.get("tool_call_id")
    if not isinstance(content, str):
        raise InvalidExample(f"{here}.content must be a string")
    if not isinstance(call_id, str) or call_id not in calls:
        raise InvalidExample(f"{here}.tool_call_id must name a tool call made earlier in the conversation")
    return f"<tool_response>\n{content}\n</tool_response>"


def _with_tools(turns: list[Message], tools: list[dict[str, Any]]) -> tuple[Message, ...]:
    if not tools:
        return tuple(turns)
    block = TOOLS_HEADER + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools) + TOOLS_FOOTER
    if turns[0]["role"] == "system":
        first = {"role": "system", "content": f"{turns[0]['content']}\n\n{block}"}
        return (first, *turns[1:])
    return ({"role": "system", "content": block}, *turns)
