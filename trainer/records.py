"""Training examples: the record types every training method learns from, and the snapshot
that holds them.

Three record types cover every training method:

- `SFTRecord`: a chat whose LAST message is the assistant answer to learn.
- `PreferenceRecord`: a prompt (ending with a user message) and a chosen / rejected answer.
- `RatedRecord`: a prompt and ONE answer labelled good or bad (a thumbs up or down), the
  unpaired signal KTO learns from.

`PromptRecord` is an input without an answer (distillation, reinforcement). A `Snapshot` is
a frozen set of records split into train and held-out parts (built and stored by
trainer.datasets). Also here: how two examples are compared (`normalise_text`,
`prompt_key`) and the canonical JSON their order and hashes are taken over.

This module is the base of the trainer's data model and imports nothing of it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SNAPSHOT_FORMAT = 1

Message = dict[str, str]


def _ends_with(messages: Sequence[Message], role: str, message: str) -> None:
    if not messages or messages[-1].get("role") != role:
        raise ValueError(message)


@dataclass(frozen=True)
class SFTRecord:
    """A chat to imitate; the last message is the assistant target."""

    messages: tuple[Message, ...]

    def __post_init__(self) -> None:
        _ends_with(self.messages, "assistant", "an SFT record must end with an assistant message")

    @property
    def prompt(self) -> tuple[Message, ...]:
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]

    def to_json(self) -> dict[str, Any]:
        return {"messages": [dict(m) for m in self.messages]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SFTRecord:
        return cls(messages=as_messages(data["messages"]))


@dataclass(frozen=True)
class PreferenceRecord:
    """A prompt and two answers, `chosen` better than `rejected` (DPO and friends)."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        _ends_with(self.prompt, "user", "a preference prompt must end with a user message")

    def to_json(self) -> dict[str, Any]:
        return {"prompt": [dict(m) for m in self.prompt], "chosen": self.chosen, "rejected": self.rejected}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreferenceRecord:
        return cls(prompt=as_messages(data["prompt"]), chosen=data["chosen"], rejected=data["rejected"])


@dataclass(frozen=True)
class PromptRecord:
    """An input without an answer (a chat ending with a user turn): what a teacher answers,
    or what a reinforcement job samples answers to, with the fields its grader reads
    (OpenAI's RFT rows: `messages` plus any other keys, kept as canonical JSON in `item`)."""

    messages: tuple[Message, ...]
    item: str = "{}"

    def __post_init__(self) -> None:
        _ends_with(self.messages, "user", "a prompt record must end with a user message")

    @property
    def prompt(self) -> tuple[Message, ...]:
        return self.messages

    def fields(self) -> dict[str, Any]:
        return dict(json.loads(self.item))

    def to_json(self) -> dict[str, Any]:
        return {**self.fields(), "messages": [dict(m) for m in self.messages]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PromptRecord:
        item = {k: v for k, v in data.items() if k != "messages"}
        return cls(messages=as_messages(data["messages"]), item=canonical(item).decode())


@dataclass(frozen=True)
class RatedRecord:
    """A prompt (ending with a user message) and one answer, rated good (True) or bad (False)."""

    prompt: tuple[Message, ...]
    completion: str
    label: bool

    def __post_init__(self) -> None:
        _ends_with(self.prompt, "user", "a rated prompt must end with a user message")

    def to_json(self) -> dict[str, Any]:
        return {"prompt": [dict(m) for m in self.prompt], "completion": self.completion, "label": self.label}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RatedRecord:
        return cls(prompt=as_messages(data["prompt"]), completion=data["completion"], label=bool(data["label"]))


Record = SFTRecord | PreferenceRecord | RatedRecord | PromptRecord


@dataclass(frozen=True)
class Snapshot:
    id: str
    tenant_id: str
    source: str  # feedback | file | distillation
    train_sft: tuple[SFTRecord, ...]
    train_preferences: tuple[PreferenceRecord, ...]
    heldout_sft: tuple[SFTRecord, ...]
    heldout_preferences: tuple[PreferenceRecord, ...]
    params: dict[str, Any] = field(default_factory=dict)
    train_ratings: tuple[RatedRecord, ...] = ()
    heldout_ratings: tuple[RatedRecord, ...] = ()
    # Reinforcement: prompts and their grader fields (no answers).
    train_prompts: tuple[PromptRecord, ...] = ()
    heldout_prompts: tuple[PromptRecord, ...] = ()

    @property
    def heldout_count(self) -> int:
        held = (self.heldout_sft, self.heldout_preferences, self.heldout_ratings, self.heldout_prompts)
        return sum(len(h) for h in held)

    def content(self) -> dict[str, Any]:
        """Everything the id is a hash of (and what is stored, plus the id)."""

        def part(
            sft: Sequence[SFTRecord],
            prefs: Sequence[PreferenceRecord],
            rated: Sequence[RatedRecord],
            prompts: Sequence[PromptRecord],
        ) -> Any:
            out: dict[str, Any] = {"sft": [r.to_json() for r in sft], "preferences": [r.to_json() for r in prefs]}
            # Each only when present: snapshots without them keep the ids they always had.
            if rated:
                out["ratings"] = [r.to_json() for r in rated]
            if prompts:
                out["prompts"] = [r.to_json() for r in prompts]
            return out

        return {
            "format": SNAPSHOT_FORMAT,
            "tenant_id": self.tenant_id,
            "source": self.source,
            "params": self.params,
            "train": part(self.train_sft, self.train_preferences, self.train_ratings, self.train_prompts),
            "heldout": part(self.heldout_sft, self.heldout_preferences, self.heldout_ratings, self.heldout_prompts),
        }


def as_messages(raw: Iterable[dict[str, Any]]) -> tuple[Message, ...]:
    return tuple({"role": str(m["role"]), "content": str(m["content"])} for m in raw)


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sorted_records(records: list[Any]) -> list[Any]:
    return sorted(records, key=lambda r: canonical(r.to_json()))


# -----------------------------------------------------------------------------
# comparing examples

_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    # Only what never changes meaning: Unicode form and whitespace. Case stays, because a
    # correction that only fixes capitalisation is still a correction.
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def prompt_key(messages: Sequence[Message]) -> str:
    return canonical([[m["role"], normalise_text(m["content"])] for m in messages]).decode()
