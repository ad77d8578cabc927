"""What a grade comes to: the reward and, as OpenAI reports them, what went wrong."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GradeErrors:
    """OpenAI's error flags of a grade (RunGraderResponse.metadata.errors)."""

    formula_parse_error: bool = False
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    invalid_variable_error: bool = False
    other_error: bool = False
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_server_error_details: str | None = None

    @property
    def any(self) -> bool:
        return any(v is True for v in dataclasses.asdict(self).values())

    def merge(self, other: GradeErrors) -> None:
        """Take on `other`'s flags (a multi grader reports its sub-graders' errors)."""
        for name, value in dataclasses.asdict(other).items():
            if value and not getattr(self, name):
                setattr(self, name, value)


@dataclass
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: TokenUsage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens

    def public(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
        }


@dataclass
class GradeResult:
    """One grade. `reward` is 0 when the grade failed (`errors` says how); `sub_rewards` holds a
    multi grader's per-grader rewards; `usage` the tokens model graders spent, per model."""

    name: str
    type: str
    reward: float = 0.0
    errors: GradeErrors = field(default_factory=GradeErrors)
    sub_rewards: dict[str, float] = field(default_factory=dict)
    usage: dict[str, TokenUsage] = field(default_factory=dict)
    sampled_model_name: str | None = None
    execution_time: float = 0.0

    def add_usage(self, model: str, usage: TokenUsage) -> None:
        self.usage.setdefault(model, TokenUsage()).add(usage)

    @property
    def total_tokens(self) -> int | None:
        return sum(u.total_tokens for u in self.usage.values()) if self.usage else None

    def as_run_response(self) -> dict[str, Any]:
        """RunGraderResponse's body."""
        return {
            "reward": self.reward,
            "metadata": {
                "name": self.name,
                "type": self.type,
                "errors": dataclasses.asdict(self.errors),
                "execution_time": self.execution_time,
                "scores": dict(self.sub_rewards),
                "token_usage": self.total_tokens,
                "sampled_model_name": self.sampled_model_name,
            },
            "sub_rewards": dict(self.sub_rewards),
            "model_grader_token_usage_per_model": {m: u.public() for m, u in self.usage.items()},
        }
