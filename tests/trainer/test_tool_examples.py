"""Fine-tuning lines in OpenAI's function-calling format: validated, and trained as text turns."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import TailorError
from trainer import files, tool_examples
from trainer.datasets import InvalidExample, SFTRecord

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def call(call_id: str = "call_1", city: str = "Paris", name: str = "get_weather") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps({"city": city})}}


def example(**overrides: Any) -> dict[str, Any]:
    """OpenAI's documented fine-tuning example: a call, its result, the final answer."""
    line: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call()]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 18}'},
            {"role": "assistant", "content": "It is 18 °C in Paris."},
        ],
        "tools": [WEATHER],
        "parallel_tool_calls": False,
    }
    line.update(overrides)
    return line


def jsonl(*lines: dict[str, Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_the_documented_text_form() -> None:
    system, user, calling, result, answer = tool_examples.text_turns(example())
    assert system["role"] == "system"
    assert system["content"] == (
        tool_examples.TOOLS_HEADER + json.dumps(WEATHER, ensure_ascii=False) + tool_examples.TOOLS_FOOTER
    )
    assert "<tools>\n" in system["content"] and '"name": <function-name>' in system["content"]
    assert user == {"role": "user", "content": "Weather in Paris?"}
    assert calling == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    }
    assert result == {"role": "user", "content": '<tool_response>\n{"celsius": 18}\n</tool_response>'}
    assert answer == {"role": "assistant", "content": "It is 18 °C in Paris."}


def test_system_prompt_keeps_its_text_and_parallel_calls_and_results_share_a_turn() -> None:
    line = example(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Paris and Rome?"},
            {"role": "assistant", "content": "Checking both.", "tool_calls": [call("a"), call("b", "Rome")]},
            {"role": "tool", "tool_call_id": "a", "content": "18"},
            {"role": "tool", "tool_call_id": "b", "content": "24"},
            {"role": "assistant", "content": "18 and 24."},
        ],
        parallel_tool_calls=True,
    )
    system, _, calling, results, _ = tool_examples.text_turns(line)
    assert system["content"].startswith("Be brief.\n\n# Tools\n")
    assert (
        calling["content"].startswith("Checking both.\n<tool_call>\n") and calling["content"].count("<tool_call>") == 2
    )
    assert results["content"] == "<tool_response>\n18\n</tool_response>\n<tool_response>\n24\n</tool_response>"


def test_a_tool_file_parses_as_chat_examples_ending_with_their_last_answer() -> None:
    ending_with_a_call = example(messages=example()["messages"][:2])
    parsed = files.parse_jsonl(jsonl(example(), ending_with_a_call, example(tools=None)))
    assert parsed.kind == "sft"
    first, second, untooled = parsed.records
    assert isinstance(first, SFTRecord) and first.answer == "It is 18 °C in Paris."
    assert second.answer.startswith("<tool_call>\n") and second.messages[0]["role"] == "system"
    # Calls without tool definitions are still calls: no tools block, the same call text.
    assert untooled.messages[0] == {"role": "user", "content": "Weather in Paris?"}
    assert all(set(m) == {"role", "content"} for r in parsed.records for m in r.messages)


def test_plain_chat_files_read_exactly_as_before() -> None:
    plain = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert files.parse_jsonl(jsonl(plain)).records[0].messages == tuple(plain["messages"])


def _with_messages(*messages: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return example(messages=[{"role": "user", "content": "q"}, *messages], **overrides)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            _with_messages({"role": "assistant", "tool_calls": [call(name="get_time")]}),
            "messages[1].tool_calls[0].function.name 'get_time' is not one of the example's tools",
        ),
        (
            _with_messages(
                {"role": "assistant", "tool_calls": [{**call(), "function": {"name": "get_weather", "arguments": "{"}}]}
            ),
            "messages[1].tool_calls[0].function.arguments must be a JSON object",
        ),
        (
            _with_messages({"role": "assistant", "tool_calls": [{**call(), "id": ""}]}),
            "messages[1].tool_calls[0].id must be a non-empty string",
        ),
        (
            _with_messages({"role": "assistant", "tool_calls": []}),
            "messages[1].tool_calls must be a non-empty list",
        ),
        (
            _with_messages({"role": "assistant", "tool_calls": [call("a"), call("b")]}),
            "messages[1] has 2 tool calls but parallel_tool_calls is false",
        ),
        (
            _with_messages(
                {"role": "assistant", "tool_calls": [call()]},
                {"role": "tool", "tool_call_id": "call_9", "content": "x"},
                {"role": "assistant", "content": "a"},
            ),
            "messages[2].tool_call_id must name a tool call made earlier",
        ),
        (
            _with_messages(
                {"role": "assistant", "tool_calls": [call()]},
                {"role": "tool", "tool_call_id": "call_1", "content": None},
                {"role": "assistant", "content": "a"},
            ),
            "messages[2].content must be a string",
        ),
        (
            _with_messages({"role": "assistant", "content": "a", "refusal": "no"}),
            "messages[1].refusal is not supported",
        ),
        (
            _with_messages({"role": "assistant", "tool_calls": [call()], "weight": 0}),
            "messages[1].weight 0 is not supported",
        ),
        (_with_messages({"role": "bot", "content": "a"}), "messages[1].role must be one of"),
        (_with_messages({"role": "assistant", "content": "a"}, tools=[{"type": "code"}]), "tools[0] must be"),
        (
            _with_messages(
                {"role": "assistant", "content": "a"},
                tools=[{"type": "function", "function": {"name": "bad name"}}],
            ),
            "tools[0].function.name must be 1 to 64 letters",
        ),
        (
            _with_messages({"role": "assistant", "content": "a"}, tools=[WEATHER, WEATHER]),
            "tools[1].function.name 'get_weather' is defined twice",
        ),
        (
            _with_messages(
                {"role": "assistant", "content": "a"}, tools=[{**WEATHER, "function": {"name": "f", "x": 1}}]
            ),
            "tools[0].function has unknown keys: x",
        ),
        (
            _with_messages({"role": "assistant", "content": "a"}, parallel_tool_calls="yes"),
            "parallel_tool_calls must be",
        ),
        (
            _with_messages({"role": "assistant", "content": "a"}, functions=[{"name": "f"}]),
            "functions is not supported",
        ),
    ],
)
def test_malformed_tool_examples_are_refused_with_line_and_field(line: dict[str, Any], message: str) -> None:
    with pytest.raises(TailorError) as info:
        files.parse_jsonl(jsonl(example(), line))
    assert info.value.status == 400 and info.value.param == "file"
    assert info.value.message.startswith(f"line 2: {message}"), info.value.message


@pytest.mark.parametrize(
    "line",
    [
        {**example(), "label": True},  # rated (KTO) examples stay text only
        {
            "input": {"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": "b"}],
        },
        {"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER]},  # a distillation input
    ],
)
def test_tools_are_trained_in_chat_examples_only(line: dict[str, Any]) -> None:
    with pytest.raises(TailorError) as info:
        files.parse_jsonl(jsonl(line))
    assert "tools are trained in chat (sft) examples only" in info.value.message


def test_has_tools_looks_at_every_part_of_the_format() -> None:
    assert tool_examples.has_tools({"tools": [WEATHER], "messages": []})
    assert tool_examples.has_tools({"messages": [{"role": "tool", "content": "x"}]})
    assert tool_examples.has_tools({"messages": [{"role": "assistant", "tool_calls": [call()]}]})
    assert not tool_examples.has_tools({"messages": [{"role": "user", "content": "q"}], "tools": []})
    with pytest.raises(InvalidExample):
        tool_examples.text_turns({"tools": [WEATHER], "messages": "q"})
