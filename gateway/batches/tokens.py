"""The tokens a batch used: what each answered line's body reports, summed into OpenAI's
Batch `usage` (`input_tokens`, `output_tokens`, `total_tokens`, and the cached and reasoning
parts, which are 0 where the engine reports none).

Chat and text completions report `prompt_tokens` / `completion_tokens`, Responses
`input_tokens` / `output_tokens`; a refused line reports nothing and adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tokens:
    input: int = 0
    cached: int = 0
    output: int = 0
    reasoning: int = 0

    def usage(self) -> dict[str, Any]:
        """OpenAI's Batch `usage` object."""
        return {
            "input_tokens": self.input,
            "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens": self.output,
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
            "total_tokens": self.input + self.output,
        }


def _count(value: Any) -> int:
    # Only what an engine could mean: a count. Anything else adds nothing.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _part(details: Any, name: str) -> int:
    return _count(details.get(name)) if isinstance(details, dict) else 0


def of_answer(body: Any) -> Tokens:
    """The tokens one line's answer body reports."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return Tokens()
    if "input_tokens" in usage:  # a Response
        return Tokens(
            input=_count(usage.get("input_tokens")),
            cached=_part(usage.get("input_tokens_details"), "cached_tokens"),
            output=_count(usage.get("output_tokens")),
            reasoning=_part(usage.get("output_tokens_details"), "reasoning_tokens"),
        )
    return Tokens(
        input=_count(usage.get("prompt_tokens")),
        cached=_part(usage.get("prompt_tokens_details"), "cached_tokens"),
        output=_count(usage.get("completion_tokens")),
        reasoning=_part(usage.get("completion_tokens_details"), "reasoning_tokens"),
    )
