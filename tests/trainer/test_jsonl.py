"""trainer.jsonl: the one JSON Lines reader behind training files and feedback imports."""

from __future__ import annotations

import pytest

from trainer.jsonl import JsonLine, JsonLineError, json_lines


def test_lines_are_numbered_as_an_editor_shows_them() -> None:
    data = b'\xef\xbb\xbf{"a": 1}\n\n  \n[2]\n'
    assert list(json_lines(data)) == [JsonLine(1, {"a": 1}), JsonLine(4, [2])]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not valid UTF-8"),
        (b"{nope", "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
        (b"[" * 10_000 + b"]" * 10_000, "not valid JSON (nested too deeply)"),
        (b"9" * 5000, "not valid JSON (an integer has more than 4300 digits)"),
    ],
    ids=["utf8", "syntax", "deep-nesting", "long-integer"],
)
def test_bad_lines_are_refused_by_number(raw: bytes, reason: str) -> None:
    with pytest.raises(JsonLineError) as err:
        list(json_lines(b"{}\n" + raw + b"\n{}"))
    assert (err.value.lineno, err.value.reason) == (2, reason)
    assert str(err.value) == f"line 2: {reason}"
