"""Who answers the inputs: the protocol every teacher follows, and the local teacher (a model
Tailor serves, asked on the worker's engine)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from trainer.records import Message


class Teacher(Protocol):
    def answer(self, prompts: Sequence[Sequence[Message]]) -> list[str]:
        """One answer per prompt, in order ("" where the teacher gave none)."""
        ...


class Answerer(Protocol):
    def answers(self, model: str, prompts: Sequence[Sequence[Message]], max_tokens: int) -> list[str]:
        """Greedy answers of `model` (a name on the engine), one per prompt, in order."""
        ...


@dataclass
class LocalTeacher:
    """A model Tailor serves (base, or base + one of the tenant's adapters), asked greedily on a
    vLLM engine (trainer.compute.engine), where it answers exactly as it would when served."""

    engine: Answerer
    model: str  # its name on that engine
    max_tokens: int

    def answer(self, prompts: Sequence[Sequence[Message]]) -> list[str]:
        return self.engine.answers(self.model, prompts, self.max_tokens)
