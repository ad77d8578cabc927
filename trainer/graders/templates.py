"""Grader templates: `{{ namespace.path }}` replaced by the value it names.

As OpenAI's graders: the namespaces are `item` (the dataset row) and `sample` (the model's
answer: `output_text`, `output_json` when the answer is JSON, `output_tools`); a path goes
down objects by key and lists by index (`item.answers.0` or `item.answers[0]`). A string is
put in as it is, anything else as compact JSON. A variable that names nothing is an
`invalid_variable_error` of the grade, not a refusal: the same grader may fit most items.

Bounded, because the template, the item and the sample are all the tenant's: a template is
at most MAX_TEMPLATE_CHARS (longer is a 400), variables are matched without backtracking
(`{{` and `}}` around no brace), and rendering stops with TooLarge as soon as its output
passes MAX_RENDERED_CHARS (a variable naming a large item field many times would otherwise
allocate without bound).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import bad_request

NAMESPACES = ("item", "sample")
MAX_TEMPLATE_CHARS = 256 * 1024
MAX_RENDERED_CHARS = 1 << 20
_VARIABLE = re.compile(r"\{\{([^{}]*)\}\}")
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|\d+")
_MISSING = object()


@dataclass(frozen=True)
class Sample:
    """The `sample` namespace: one model answer."""

    output_text: str
    output_json: Any = _MISSING
    output_tools: list[Any] = field(default_factory=list)

    @classmethod
    def from_text(cls, text: str) -> Sample:
        """An answer given as text (`model_sample`): `output_json` is set when it parses as JSON."""
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):  # nested deeper than the parser goes: not JSON here
            parsed = _MISSING
        return cls(output_text=text, output_json=parsed)

    @property
    def is_json(self) -> bool:
        return self.output_json is not _MISSING

    def namespace(self) -> dict[str, Any]:
        values: dict[str, Any] = {"output_text": self.output_text, "output_tools": self.output_tools}
        if self.is_json:
            values["output_json"] = self.output_json
        return values


class TooLarge(Exception):
    """A rendered text (or the text a metric would compare) longer than its cap."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} is longer than {limit} characters")


class VariableError(Exception):
    """A template variable that names nothing in this sample or item."""

    def __init__(self, variable: str, *, sample_not_json: bool = False) -> None:
        super().__init__(variable)
        self.variable = variable
        self.sample_not_json = sample_not_json


def _path(expression: str) -> list[str] | None:
    """`item.a.b[0]` as ["item", "a", "b", "0"]; None when it is not a variable path."""
    text = expression.strip().replace("[", ".").replace("]", "")
    segments = text.split(".")
    if not segments or not all(_SEGMENT.fullmatch(s) for s in segments):
        return None
    return segments


def check(template: str, param: str) -> None:
    """400 naming `param` for a template too long, or a variable that is not `{{ item.* }}` or
    `{{ sample.* }}`."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise bad_request(
            f"The template in {param} is longer than {MAX_TEMPLATE_CHARS} characters.",
            code="invalid_grader",
            param=param,
        )
    for match in _VARIABLE.finditer(template):
        segments = _path(match.group(1))
        if segments is None or segments[0] not in NAMESPACES:
            raise bad_request(
                f"Invalid template variable {match.group(0)!r} in {param}: variables are "
                "{{ item.<path> }} or {{ sample.<path> }} (e.g. {{ sample.output_text }}).",
                code="invalid_grader",
                param=param,
            )
        if segments[0] == "sample" and len(segments) == 1:
            raise bad_request(
                f"Invalid template variable {match.group(0)!r} in {param}: name a field of the sample "
                "(output_text, output_json, output_tools).",
                code="invalid_grader",
                param=param,
            )


def _lookup(segments: list[str], sample: Sample, item: Mapping[str, Any]) -> Any:
    value: Any = {"item": item, "sample": sample.namespace()}
    for i, segment in enumerate(segments):
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            not_json = segments[:2] == ["sample", "output_json"] and i == 1 and not sample.is_json
            raise VariableError(".".join(segments), sample_not_json=not_json)
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render(template: str, sample: Sample, item: Mapping[str, Any], limit: int = MAX_RENDERED_CHARS) -> str:
    """The template with each variable replaced; raises VariableError for one that names
    nothing, TooLarge once the text passes `limit` characters."""
    parts: list[str] = []
    size = 0
    end = 0
    for match in _VARIABLE.finditer(template):
        segments = _path(match.group(1))
        if segments is None or segments[0] not in NAMESPACES:
            raise VariableError(match.group(0))
        for part in (template[end : match.start()], _text(_lookup(segments, sample, item))):
            size += len(part)
            if size > limit:
                raise TooLarge("the rendered template", limit)
            parts.append(part)
        end = match.end()
    parts.append(template[end:])
    if size + len(parts[-1]) > limit:
        raise TooLarge("the rendered template", limit)
    return "".join(parts)
