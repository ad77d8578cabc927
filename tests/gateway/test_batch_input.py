"""Batch input files (gateway.batches.input_file): every refusal names its line, with `param`
"file"; a good file's requests come back in order."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import TailorError
from gateway.batches.input_file import MAX_CUSTOM_ID_CHARS, parse
from tests.openai_schema import BATCH_REQUEST_INPUT, validate

CHAT = "/v1/chat/completions"


def request(custom_id: str = "r1", **overrides: Any) -> dict[str, Any]:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
    }
    line.update(overrides)
    return line


def jsonl(*lines: Any) -> bytes:
    return b"".join((json.dumps(x) if not isinstance(x, bytes) else x.decode()).encode() + b"\n" for x in lines)


def refusal(data: bytes, *, max_lines: int = 100) -> TailorError:
    with pytest.raises(TailorError) as caught:
        parse(data, max_lines=max_lines)
    assert caught.value.status == 400 and caught.value.param == "file", caught.value
    return caught.value


def test_a_good_file_parses_in_order() -> None:
    lines = [request("a"), request("b", url=CHAT), request("c")]
    for line in lines:
        validate(line, BATCH_REQUEST_INPUT)
    data = jsonl(lines[0], b"", lines[1], lines[2])  # a blank line is skipped, but counted
    parsed = parse(data, max_lines=3)
    assert [(p.index, p.lineno, p.custom_id, p.model) for p in parsed] == [
        (0, 1, "a", "m"),
        (1, 3, "b", "m"),
        (2, 4, "c", "m"),
    ]
    assert parsed[0].body == lines[0]["body"]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([request(), b"{not json"], "line 2: not valid JSON"),
        ([["a list"]], "line 1: must be a JSON object"),
        ([request(extra=1)], "line 1: unknown field 'extra'"),
        ([request(custom_id="")], "line 1: custom_id must be a string"),
        ([request(custom_id=7)], "line 1: custom_id must be a string"),
        ([request(custom_id="x" * (MAX_CUSTOM_ID_CHARS + 1))], "line 1: custom_id must be a string"),
        ([request("a"), request("b"), request("a")], "line 3: custom_id 'a' is also on line 1"),
        ([request(method="GET")], 'line 1: method must be "POST"'),
        ([request(url="/v1/embeddings")], "line 1: url must be one of /v1/chat/completions, /v1/completions"),
        ([request("a"), request("b", url="/v1/completions")], "line 2: url '/v1/completions' differs from line 1's"),
        ([request(body="text")], "line 1: body must be a JSON object"),
        ([request(body={"messages": []})], "line 1: body.model must name the model"),
        ([request(body={"model": ""})], "line 1: body.model must name the model"),
    ],
)
def test_bad_lines_are_refused_by_line(lines: list[Any], expected: str) -> None:
    assert expected in refusal(jsonl(*lines)).message


def test_empty_and_oversized_files_are_refused() -> None:
    assert refusal(b"\n\n").code == "empty_file"
    too_many = refusal(jsonl(request("a"), request("b"), request("c")), max_lines=2)
    assert "more than 2 requests" in too_many.message
