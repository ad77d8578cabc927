"""A reinforcement job's reward: its grader, as a function of completions and dataset items.

A reinforcement fine-tuning job (OpenAI's `method.reinforcement`) names a grader; training
samples several answers per prompt and the grader scores each one against the prompt's row
of the training file (OpenAI's RFT format: `messages` ending with a user turn, plus any other
fields, which the grader reads as `{{ item.<field> }}`; the answer is `{{ sample.output_text }}`).
The trainer sees only this interface:

    check_grader(spec)          -> the grader as stored on the job; a 400 naming the field if bad
    reward = reward_for(spec)   # reward(completions, items) -> one score in [0, 1] per completion

so that the job is refused at creation, never failed later, for a grader Tailor cannot run.
Supported here: `string_check` (eq, ne, like: contains, ilike: contains ignoring case), which
needs no model and no code of the tenant's. No torch: the gateway validates jobs with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core.errors import bad_request

Reward = Callable[[Sequence[str], Sequence[Mapping[str, Any]]], list[float]]

PARAM = "method.reinforcement.grader"
STRING_CHECK_OPERATIONS = ("eq", "ne", "like", "ilike")
# A grader's templates are short; a longer one is a mistake or an attempt to make each
# completion's grading expensive.
MAX_TEMPLATE_CHARS = 4096
_TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH = re.compile(r"^(sample\.output_text|item(\.[A-Za-z0-9_]+)+)$")


def check_grader(spec: Any) -> dict[str, Any]:
    """The grader spec as the job stores it; a 400 whose `param` names the bad field."""
    if not isinstance(spec, dict):
        raise bad_request("A reinforcement job needs a grader object.", param=PARAM)
    kind = spec.get("type")
    if kind != "string_check":
        raise bad_request(f"Unsupported grader type {kind!r}; Tailor runs string_check graders.", param=f"{PARAM}.type")
    unknown = sorted(set(spec) - {"type", "name", "input", "reference", "operation"})
    if unknown:
        raise bad_request(f"Unknown string_check grader field {unknown[0]!r}.", param=f"{PARAM}.{unknown[0]}")
    for key in ("name", "input", "reference"):
        value = spec.get(key)
        if not isinstance(value, str) or (key == "name" and not value):
            raise bad_request(f"The grader's {key} must be a string.", param=f"{PARAM}.{key}")
        if len(value) > MAX_TEMPLATE_CHARS:
            raise bad_request(
                f"The grader's {key} is longer than {MAX_TEMPLATE_CHARS} characters.", param=f"{PARAM}.{key}"
            )
        for name in _TEMPLATE.findall(value):
            if not _PATH.match(name):
                raise bad_request(
                    f"The grader's {key} refers to {{{{ {name} }}}}; templates may name sample.output_text "
                    "or item.<field>.",
                    param=f"{PARAM}.{key}",
                )
    if spec.get("operation") not in STRING_CHECK_OPERATIONS:
        raise bad_request(
            f"The grader's operation must be one of {', '.join(STRING_CHECK_OPERATIONS)}.",
            param=f"{PARAM}.operation",
        )
    return {k: spec[k] for k in ("type", "name", "input", "reference", "operation")}


def render(template: str, sample: str, item: Mapping[str, Any]) -> str:
    """`{{ sample.output_text }}` and `{{ item.a.b }}` filled in; a missing field renders empty."""

    def value(match: re.Match[str]) -> str:
        path = match.group(1)
        if path == "sample.output_text":
            return sample
        found: Any = item
        for part in path.split(".")[1:]:
            found = found.get(part) if isinstance(found, Mapping) else None
        return "" if found is None else str(found)

    return _TEMPLATE.sub(value, template)


def string_check(operation: str, given: str, reference: str) -> float:
    if operation == "eq":
        return float(given == reference)
    if operation == "ne":
        return float(given != reference)
    if operation == "like":
        return float(reference in given)
    return float(reference.lower() in given.lower())


def reward_for(spec: Mapping[str, Any]) -> Reward:
    """The grader as a reward: completions and their rows (in the same order) -> scores."""
    grader = check_grader(dict(spec))

    def reward(completions: Sequence[str], items: Sequence[Mapping[str, Any]]) -> list[float]:
        return [
            string_check(
                grader["operation"],
                render(grader["input"], text, item),
                render(grader["reference"], text, item),
            )
            for text, item in zip(completions, items, strict=True)
        ]

    return reward


def mean_score(reward: Reward, completions: Sequence[str], items: Sequence[Mapping[str, Any]]) -> float:
    """The grader's mean score over these completions (0 for none)."""
    scores = reward(completions, items)
    return sum(scores) / len(scores) if scores else 0.0
