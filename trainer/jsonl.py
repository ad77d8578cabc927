"""Reading uploaded JSON Lines (training files, feedback imports): one JSON value per line.

One reader for every upload, so bad bytes are refused the same way everywhere: a
`JsonLineError` naming the line, which callers turn into a 400. That includes what
Python's json refuses with other exceptions than JSONDecodeError: nesting deeper than
the interpreter's recursion limit (RecursionError) and integers with more digits than
sys.get_int_max_str_digits() (ValueError); left alone, either would be a 500.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, as some editors write


@dataclass(frozen=True)
class JsonLine:
    lineno: int  # 1-based, counting blank lines, as an editor shows it
    value: Any


class JsonLineError(ValueError):
    def __init__(self, lineno: int, reason: str) -> None:
        super().__init__(f"line {lineno}: {reason}")
        self.lineno, self.reason = lineno, reason


def json_lines(data: bytes) -> Iterator[JsonLine]:
    """Each non-blank line of `data`, parsed; JsonLineError at the first bad one."""
    for lineno, raw in enumerate(data.removeprefix(_BOM).split(b"\n"), start=1):
        if raw.strip():
            yield JsonLine(lineno, _parse(lineno, raw))


def _parse(lineno: int, raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonLineError(lineno, "not valid UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonLineError(lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise JsonLineError(lineno, "not valid JSON (nested too deeply)") from None
    except ValueError:
        # The only other ValueError json.loads raises: int() refusing a huge literal.
        limit = sys.get_int_max_str_digits()
        raise JsonLineError(lineno, f"not valid JSON (an integer has more than {limit} digits)") from None
