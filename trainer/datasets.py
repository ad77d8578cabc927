"""Training examples and immutable dataset snapshots: what a run learns from and is judged on.

Three record types cover every training method:

- `SFTRecord`: a chat whose LAST message is the assistant answer to learn.
- `PreferenceRecord`: a prompt (ending with a user message) and a chosen / rejected answer.
- `RatedRecord`: a prompt and ONE answer labelled good or bad (a thumbs up or down), the
  unpaired signal KTO learns from.

A `Snapshot` is a frozen set of records split into train and held-out parts. Its id is a
hash of its content and build parameters, so building twice from the same data gives the
same id, one blob and one `Dataset` row; a job or evaluation that names a dataset id names
exactly the examples it used.

Sources:

- `build_from_feedback`: the tenant's rated / corrected interactions and imported examples.
- `build_from_files`: an uploaded training file (and optional validation file).

The held-out split is decided per normalised prompt by a hash, never by a random draw:
the same prompt never lands on both sides (no leak of a training answer into the judge's
questions), and adding data later never moves an old example across the split.

This module is the base of the trainer's data model: `trainer.files` and
`trainer.feedback` import the record types and the message checks from here, so this
module imports `trainer.files` only inside `build_from_files`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError, bad_request, not_found
from core.ids import as_utc
from core.models import Dataset, Feedback, Interaction

ROLES = ("system", "user", "assistant")
# Longest text accepted in one feedback field or imported message: enough for long
# answers, small enough that one bad client cannot fill the database with a few calls.
MAX_TEXT_CHARS = 32_000
SNAPSHOT_FORMAT = 1
# A score (0..1) without a rating reads as "good" from this value up.
GOOD_SCORE = 0.5
CHAT_ENDPOINT = "chat.completions"
# Endpoints whose logged request is a chat request (`messages`): the Responses API logs the
# chat request it was answered with, the whole conversation included.
CHAT_FORM_ENDPOINTS = frozenset({CHAT_ENDPOINT, "responses"})

Message = dict[str, str]
Verdict = Literal["good", "bad"]


class InvalidExample(ValueError):
    """A malformed example. `str()` names the field path; callers prefix the line."""


# -----------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class SFTRecord:
    """A chat to imitate; the last message is the assistant target."""

    messages: tuple[Message, ...]

    def __post_init__(self) -> None:
        if not self.messages or self.messages[-1].get("role") != "assistant":
            raise ValueError("an SFT record must end with an assistant message")

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
        return cls(messages=_as_messages(data["messages"]))


@dataclass(frozen=True)
class PreferenceRecord:
    """A prompt and two answers, `chosen` better than `rejected` (DPO and friends)."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        if not self.prompt or self.prompt[-1].get("role") != "user":
            raise ValueError("a preference prompt must end with a user message")

    def to_json(self) -> dict[str, Any]:
        return {"prompt": [dict(m) for m in self.prompt], "chosen": self.chosen, "rejected": self.rejected}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreferenceRecord:
        return cls(prompt=_as_messages(data["prompt"]), chosen=data["chosen"], rejected=data["rejected"])


@dataclass(frozen=True)
class PromptRecord:
    """An input without an answer (a chat ending with a user turn): what a teacher answers,
    or what a reinforcement job samples answers to, with the fields its grader reads
    (OpenAI's RFT rows: `messages` plus any other keys, kept as canonical JSON in `item`)."""

    messages: tuple[Message, ...]
    item: str = "{}"

    def __post_init__(self) -> None:
        if not self.messages or self.messages[-1].get("role") != "user":
            raise ValueError("a prompt record must end with a user message")

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
        return cls(messages=_as_messages(data["messages"]), item=_canonical(item).decode())


@dataclass(frozen=True)
class RatedRecord:
    """A prompt (ending with a user message) and one answer, rated good (True) or bad (False)."""

    prompt: tuple[Message, ...]
    completion: str
    label: bool

    def __post_init__(self) -> None:
        if not self.prompt or self.prompt[-1].get("role") != "user":
            raise ValueError("a rated prompt must end with a user message")

    def to_json(self) -> dict[str, Any]:
        return {"prompt": [dict(m) for m in self.prompt], "completion": self.completion, "label": self.label}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RatedRecord:
        return cls(prompt=_as_messages(data["prompt"]), completion=data["completion"], label=bool(data["label"]))


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


def _as_messages(raw: Iterable[dict[str, Any]]) -> tuple[Message, ...]:
    return tuple({"role": str(m["role"]), "content": str(m["content"])} for m in raw)


# -----------------------------------------------------------------------------
# checks shared by files and feedback import

# OpenAI fine-tuning fields Tailor cannot train on; refused by name instead of being
# silently dropped, which would train on a different conversation than the one sent.
_UNSUPPORTED_MESSAGE_KEYS = ("tool_calls", "function_call", "tool_call_id", "refusal", "audio")


def check_messages(value: Any, where: str = "messages", *, max_chars: int | None = None) -> tuple[Message, ...]:
    """Validate an OpenAI chat message list (text only) and return it as role/content pairs.

    Raises InvalidExample with a path such as "messages[2].role must be one of ...".
    """
    if not isinstance(value, list) or not value:
        raise InvalidExample(f"{where} must be a non-empty list of messages")
    return tuple(check_message(msg, f"{where}[{i}]", max_chars=max_chars) for i, msg in enumerate(value))


def check_message(msg: Any, here: str, *, max_chars: int | None = None) -> Message:
    """One text message of a list (`here` names it in errors, e.g. "messages[2]")."""
    if not isinstance(msg, dict):
        raise InvalidExample(f"{here} must be an object with role and content")
    role = msg.get("role")
    if role not in ROLES:
        raise InvalidExample(f"{here}.role must be one of {', '.join(ROLES)} (got {role!r})")
    for key in _UNSUPPORTED_MESSAGE_KEYS:
        if msg.get(key) is not None:
            raise InvalidExample(f"{here}.{key} is not supported (text messages only)")
    content = msg.get("content")
    if not isinstance(content, str):
        raise InvalidExample(f"{here}.content must be a string (got {_kind(content)})")
    if role == "assistant" and not content.strip():
        raise InvalidExample(f"{here}.content must not be empty for an assistant message")
    if max_chars is not None and len(content) > max_chars:
        raise InvalidExample(f"{here}.content is longer than {max_chars} characters")
    weight = msg.get("weight")
    if weight is not None and (isinstance(weight, bool) or weight != 1):
        # OpenAI's weight 0 excludes a turn from the loss; our SFT loop trains every
        # assistant turn, so accepting it would silently train what was excluded.
        raise InvalidExample(f"{here}.weight {weight!r} is not supported (only 1)")
    return {"role": role, "content": content}


def check_text(value: Any, name: str, *, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """A bounded, non-blank optional text field."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidExample(f"{name} must be a string (got {_kind(value)})")
    if not value.strip():
        raise InvalidExample(f"{name} must not be empty")
    if len(value) > max_chars:
        raise InvalidExample(f"{name} is longer than {max_chars} characters")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def verdict(rating: str | None, score: float | None) -> Verdict | None:
    """How one piece of feedback reads as good / bad: the rating wins, else the score."""
    if rating in ("good", "bad"):
        return rating  # type: ignore[return-value]
    if score is not None:
        return "good" if score >= GOOD_SCORE else "bad"
    return None


# -----------------------------------------------------------------------------
# normalisation, de-duplication and the split

_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    # Only what never changes meaning: Unicode form and whitespace. Case stays, because a
    # correction that only fixes capitalisation is still a correction.
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def prompt_key(messages: Sequence[Message]) -> str:
    return _canonical([[m["role"], normalise_text(m["content"])] for m in messages]).decode()


def _bucket(key: str) -> float:
    """A stable position in [0, 1) for a prompt; below the held-out fraction: held out."""
    digest = hashlib.sha256(b"tailor-heldout\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _record_key(record: Record) -> str:
    return prompt_key(record.prompt)


def split(records: Sequence[Record], heldout_fraction: float, min_heldout: int) -> tuple[list[Record], list[Record]]:
    """(train, heldout) by prompt hash; at least `min_heldout` held out when possible.

    Possible means: at least two examples with at least two distinct prompts, because a
    prompt is never split and at least one prompt always stays for training.
    """
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[_record_key(r)].append(r)
    order = sorted(groups, key=lambda k: (_bucket(k), k))
    held = {k for k in order if _bucket(k) < heldout_fraction}
    if len(records) < 2 or len(groups) < 2:
        held = set()
    else:
        if len(held) == len(groups):
            held.discard(order[-1])  # keep something to train on
        held_n = sum(len(groups[k]) for k in held)
        # Top up with the prompts closest to the threshold: the ones a slightly larger
        # fraction would have taken anyway, so the choice stays stable as data grows.
        for k in order:
            if held_n >= min_heldout or len(groups) - len(held) <= 1:
                break
            if k not in held:
                held.add(k)
                held_n += len(groups[k])
    train = [r for k in order if k not in held for r in groups[k]]
    heldout = [r for k in order if k in held for r in groups[k]]
    return train, heldout


@dataclass
class _Candidates:
    """Examples gathered from feedback before de-duplication."""

    sft: dict[tuple[str, str], tuple[int, SFTRecord]] = field(default_factory=dict)
    preferences: dict[tuple[str, str, str], PreferenceRecord] = field(default_factory=dict)
    ratings: dict[tuple[str, str], RatedRecord] = field(default_factory=dict)

    def add_sft(self, prompt: tuple[Message, ...], answer: str, *, priority: int) -> None:
        record = SFTRecord(messages=(*prompt, {"role": "assistant", "content": answer}))
        key = (prompt_key(prompt), normalise_text(answer))
        self.sft[key] = _pick(self.sft.get(key), (priority, record))

    def add_preference(self, prompt: tuple[Message, ...], chosen: str, rejected: str) -> None:
        if normalise_text(chosen) == normalise_text(rejected):
            return  # no signal in a pair of equal answers
        record = PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected)
        key = (prompt_key(prompt), normalise_text(chosen), normalise_text(rejected))
        self.preferences.setdefault(key, record)  # the first seen, as for SFT

    def add_rating(self, prompt: tuple[Message, ...], answer: str, good: bool) -> None:
        # The newest word on an answer counts: a later correction makes a once-good answer bad.
        self.ratings[(prompt_key(prompt), normalise_text(answer))] = RatedRecord(prompt, answer, good)

    def result(self) -> tuple[list[SFTRecord], list[PreferenceRecord]]:
        # A corrected prompt keeps only its corrected answers: a "good" rating on another
        # interaction with the same prompt is outweighed by someone writing the answer.
        best: dict[str, int] = {}
        for (pkey, _), (priority, _) in self.sft.items():
            best[pkey] = max(best.get(pkey, priority), priority)
        sft = [r for (pkey, _), (priority, r) in self.sft.items() if priority == best[pkey]]
        return _sorted(sft), _sorted(list(self.preferences.values()))


def _pick(old: tuple[int, SFTRecord] | None, new: tuple[int, SFTRecord]) -> tuple[int, SFTRecord]:
    # Among duplicates the higher priority wins, then the first seen (answers are emitted
    # in the order of their oldest feedback): a choice that newer data never changes.
    if old is None or new[0] > old[0]:
        return new
    return old


def _sorted(records: list[Any]) -> list[Any]:
    return sorted(records, key=lambda r: _canonical(r.to_json()))


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -----------------------------------------------------------------------------
# builders


def _check_split_params(heldout_fraction: float, min_heldout: int) -> None:
    if not (
        isinstance(heldout_fraction, int | float) and 0 <= heldout_fraction < 1 and math.isfinite(heldout_fraction)
    ):
        raise bad_request(f"heldout_fraction must be in [0, 1) (got {heldout_fraction!r})", param="heldout_fraction")
    if not isinstance(min_heldout, int) or min_heldout < 0:
        raise bad_request(f"min_heldout must be a non-negative integer (got {min_heldout!r})", param="min_heldout")


def prompt_from_request(endpoint: str, request: dict[str, Any]) -> tuple[Message, ...] | None:
    """The chat prompt of a logged request, or None when it cannot be trained on.

    Legacy completions are skipped: they are served without the chat template, so an
    example rendered with it would teach a format the endpoint never sees. Requests with
    tool calls, images or a final non-user turn (assistant prefill) are skipped too.
    """
    if endpoint not in CHAT_FORM_ENDPOINTS:
        return None
    raw = request.get("messages")
    if not isinstance(raw, list) or not raw:
        return None
    out: list[Message] = []
    for msg in raw:
        if not isinstance(msg, dict):
            return None
        role = "system" if msg.get("role") == "developer" else msg.get("role")
        if role not in ROLES or msg.get("tool_calls"):
            return None
        content = msg.get("content")
        if isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, dict)]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                return None
            # vLLM joins a message's text parts with newlines before templating.
            content = "\n".join(texts)  # type: ignore[arg-type]
        if not isinstance(content, str):
            return None
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        return None
    return tuple(out)


@dataclass
class _Judged:
    """Everything said about one answer, folded oldest to newest."""

    prompt: tuple[Message, ...]
    response: str | None
    verdict: Verdict | None = None
    correction: str | None = None
    pairs: list[tuple[str, str | None]] = field(default_factory=list)

    def add(self, fb: Feedback) -> None:
        v = verdict(fb.rating, fb.score)
        if v is not None:
            self.verdict = v  # the newest opinion counts
        if fb.correction:
            self.correction = fb.correction
        if fb.preferred:
            self.pairs.append((fb.preferred, fb.rejected))

    def emit(self, out: _Candidates) -> None:
        # Ratings (KTO's unpaired signal) come from every judgement: a thumbs up or down
        # rates the answer; a correction is a good answer and makes the logged one bad; a
        # preference rates both of its answers.
        if self.verdict is not None and self.response and self.correction is None:
            out.add_rating(self.prompt, self.response, self.verdict == "good")
        if self.correction is not None:
            out.add_sft(self.prompt, self.correction, priority=1)
            out.add_rating(self.prompt, self.correction, True)
            if self.response:
                out.add_preference(self.prompt, self.correction, self.response)
                out.add_rating(self.prompt, self.response, False)
        elif self.verdict == "good" and self.response:
            out.add_sft(self.prompt, self.response, priority=0)
        for preferred, rejected in self.pairs:
            other = rejected or self.response
            if other:
                out.add_preference(self.prompt, preferred, other)
                out.add_rating(self.prompt, preferred, True)
                out.add_rating(self.prompt, other, False)


def _imported(fb: Feedback) -> _Judged | None:
    """A self-contained imported example: prompt, or prompt plus the answer it judges."""
    messages = _as_messages(fb.messages or [])
    if not messages:
        return None
    response = None
    if messages[-1]["role"] == "assistant":
        response, messages = messages[-1]["content"], messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        return None
    return _Judged(prompt=messages, response=response)


def _chunks(items: list[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def build_from_feedback(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    *,
    model: str | None = None,
    heldout_fraction: float = 0.2,
    min_heldout: int = 1,
    since: datetime | None = None,
) -> Snapshot:
    """Snapshot the tenant's feedback as SFT examples and preference pairs.

    - rated good (or score >= 0.5): request messages + the logged answer (SFT);
    - corrected: request messages + correction (SFT) and correction over the logged answer;
    - preferred: preferred over rejected, or over the logged answer;
    - rated bad without a correction: nothing to imitate, no example.
    Per interaction the newest rating and correction count. `model` keeps feedback on
    answers served under that name (adapter alias or base model) plus imported examples
    that name no model. `since` keeps feedback given at or after that time.
    """
    _check_split_params(heldout_fraction, min_heldout)
    query = select(Feedback).where(Feedback.tenant_id == tenant_id)
    if model is not None:
        query = query.where((Feedback.model == model) | Feedback.model.is_(None))
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    query = query.order_by(Feedback.created_at, Feedback.id)

    with db.session() as s:
        rows = list(s.scalars(query))
        wanted = sorted({r.interaction_id for r in rows if r.interaction_id})
        interactions: dict[str, Interaction] = {}
        for chunk in _chunks(wanted):
            found = s.scalars(select(Interaction).where(Interaction.tenant_id == tenant_id, Interaction.id.in_(chunk)))
            interactions.update({i.id: i for i in found})

    # One entry per judged answer, in the order of its first feedback (oldest first).
    judged: dict[str, _Judged | None] = {}
    for fb in rows:
        key = fb.interaction_id or f"import:{fb.id}"
        if key not in judged:
            if fb.interaction_id is None:
                judged[key] = _imported(fb)
            else:
                inter = interactions.get(fb.interaction_id)
                prompt = prompt_from_request(inter.endpoint, inter.request or {}) if inter else None
                response = inter.response_text if inter and inter.status_code < 400 else None
                judged[key] = _Judged(prompt, response) if prompt else None
        item = judged[key]
        if item is not None:
            item.add(fb)

    candidates = _Candidates()
    for item in judged.values():
        if item is not None:
            item.emit(candidates)
    sft, preferences = candidates.result()
    ratings = _sorted(list(candidates.ratings.values()))
    if not sft and not preferences and not ratings:
        raise bad_request(
            "No usable feedback to build a dataset from"
            + (f" for model {model!r}" if model else "")
            + ": rate chat answers, or send corrections or preferences.",
            code="no_training_data",
            param="model" if model else None,
        )
    params = {
        "source": "feedback",
        "model": model,
        "since": as_utc(since).isoformat() if since else None,
        "heldout_fraction": heldout_fraction,
        "min_heldout": min_heldout,
        # What the feedback is made of, for a policy choosing its method (trainer.policy).
        "signals": _signals(judged.values()),
    }
    return _finish(
        db,
        blobs,
        tenant_id,
        "feedback",
        [*sft, *preferences, *ratings],
        params,
        heldout_fraction=heldout_fraction,
        min_heldout=min_heldout,
    )


def _signals(judged: Iterable[_Judged | None]) -> dict[str, int]:
    """Answers judged by a rating alone, by a correction, by a preference."""
    items = [j for j in judged if j is not None]
    return {
        "ratings_only": sum(1 for j in items if j.verdict is not None and j.correction is None and not j.pairs),
        "corrections": sum(1 for j in items if j.correction is not None),
        "preferences": sum(1 for j in items if j.pairs),
    }


def build_from_files(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    training_file: str,
    validation_file: str | None = None,
    heldout_fraction: float = 0.2,
    min_heldout: int = 1,
) -> Snapshot:
    """Snapshot an uploaded training file; held out: the validation file, else a hash split."""
    # Imported here: trainer.files builds records of this module's types.
    from trainer import files

    _check_split_params(heldout_fraction, min_heldout)
    train_info = files.get_file(db, tenant_id, training_file, param="training_file")
    train = _dedup(files.read_examples(db, blobs, tenant_id, training_file))
    params: dict[str, Any] = {
        "source": "file",
        "training_file": training_file,
        "training_sha256": train_info.sha256,
        "validation_file": validation_file,
    }
    heldout: list[Record] | None = None
    if validation_file is not None:
        val_info = files.get_file(db, tenant_id, validation_file, param="validation_file")
        if val_info.kind != train_info.kind:
            raise bad_request(
                f"validation_file {validation_file!r} holds {val_info.kind} examples but "
                f"training_file {training_file!r} holds {train_info.kind} examples.",
                code="invalid_file",
                param="validation_file",
            )
        heldout = _dedup(files.read_examples(db, blobs, tenant_id, validation_file))
        params["validation_sha256"] = val_info.sha256
    else:
        params.update(heldout_fraction=heldout_fraction, min_heldout=min_heldout)
    if heldout is None:
        return _finish(
            db, blobs, tenant_id, "file", train, params, heldout_fraction=heldout_fraction, min_heldout=min_heldout
        )
    return _store(db, blobs, tenant_id, "file", params, train=train, heldout=heldout)


def build_from_answers(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    records: Sequence[SFTRecord],
    params: dict[str, Any],
    *,
    heldout: Sequence[SFTRecord] | None = None,
    heldout_fraction: float = 0.2,
    min_heldout: int = 1,
) -> Snapshot:
    """Snapshot generated examples (a teacher's answers); held out: `heldout`, else a hash split."""
    _check_split_params(heldout_fraction, min_heldout)
    train = _dedup(records)
    if heldout is None:
        return _finish(
            db,
            blobs,
            tenant_id,
            "distillation",
            train,
            params,
            heldout_fraction=heldout_fraction,
            min_heldout=min_heldout,
        )
    return _store(db, blobs, tenant_id, "distillation", params, train=train, heldout=_dedup(heldout))


def _dedup(records: Sequence[Record]) -> list[Record]:
    seen: dict[bytes, Record] = {}
    for r in records:
        if isinstance(r, SFTRecord):
            key = _canonical(["sft", [[m["role"], normalise_text(m["content"])] for m in r.messages]])
        elif isinstance(r, RatedRecord):
            key = _canonical(["rated", prompt_key(r.prompt), normalise_text(r.completion), r.label])
        elif isinstance(r, PromptRecord):
            key = _canonical(["prompt", prompt_key(r.prompt), r.item])
        else:
            if normalise_text(r.chosen) == normalise_text(r.rejected):
                continue
            key = _canonical(["pref", prompt_key(r.prompt), normalise_text(r.chosen), normalise_text(r.rejected)])
        seen.setdefault(key, r)
    return _sorted(list(seen.values()))


def _finish(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    source: str,
    records: Sequence[Record],
    params: dict[str, Any],
    *,
    heldout_fraction: float,
    min_heldout: int,
) -> Snapshot:
    train, heldout = split(records, heldout_fraction, min_heldout)
    return _store(db, blobs, tenant_id, source, params, train=train, heldout=heldout)


def _store(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    source: str,
    params: dict[str, Any],
    *,
    train: Sequence[Record],
    heldout: Sequence[Record],
) -> Snapshot:
    def parts(records: Sequence[Record], kind: type) -> tuple[Any, ...]:
        return tuple(_sorted([r for r in records if isinstance(r, kind)]))

    train_sft, train_prefs = parts(train, SFTRecord), parts(train, PreferenceRecord)
    draft = Snapshot(
        id="",
        tenant_id=tenant_id,
        source=source,
        train_sft=train_sft,
        train_preferences=train_prefs,
        heldout_sft=parts(heldout, SFTRecord),
        heldout_preferences=parts(heldout, PreferenceRecord),
        params=params,
        train_ratings=parts(train, RatedRecord),
        heldout_ratings=parts(heldout, RatedRecord),
        train_prompts=parts(train, PromptRecord),
        heldout_prompts=parts(heldout, PromptRecord),
    )
    content = draft.content()
    dataset_id = "ds-" + hashlib.sha256(_canonical(content)).hexdigest()[:24]
    snap = replace(draft, id=dataset_id)
    key = storage_key(tenant_id, dataset_id)

    with db.session() as s:
        if s.get(Dataset, dataset_id) is not None:
            return snap  # same content, same id: already stored
    # Blob first, row second: a row never points at a missing or partial blob.
    blobs.put_bytes(key, _canonical({"id": dataset_id, **content}))
    try:
        with db.session() as s:
            s.add(
                Dataset(
                    id=dataset_id,
                    tenant_id=tenant_id,
                    source=source,
                    sft_count=len(train_sft),
                    preference_count=len(train_prefs),
                    heldout_count=snap.heldout_count,
                    storage_key=key,
                    params=params,
                )
            )
    except IntegrityError:
        pass  # built concurrently from the same data: the other writer's row is identical
    return snap


def storage_key(tenant_id: str, dataset_id: str) -> str:
    return f"datasets/{tenant_id}/{dataset_id}.json"


def load_snapshot(db: Database, blobs: BlobStore, tenant_id: str, dataset_id: str) -> Snapshot:
    with db.session() as s:
        row = s.get(Dataset, dataset_id)
        if row is None or row.tenant_id != tenant_id:
            raise not_found(f"No dataset {dataset_id!r}.", code="dataset_not_found", param="dataset_id")
        key = row.storage_key
    try:
        data = json.loads(blobs.get_bytes(key))
    except TailorError:
        raise TailorError(
            500, f"Dataset {dataset_id!r} is registered but its snapshot is missing.", code="dataset_missing"
        ) from None

    train, held = data["train"], data["heldout"]
    return Snapshot(
        id=data["id"],
        tenant_id=data["tenant_id"],
        source=data["source"],
        train_sft=tuple(SFTRecord.from_json(r) for r in train["sft"]),
        train_preferences=tuple(PreferenceRecord.from_json(r) for r in train["preferences"]),
        heldout_sft=tuple(SFTRecord.from_json(r) for r in held["sft"]),
        heldout_preferences=tuple(PreferenceRecord.from_json(r) for r in held["preferences"]),
        params=data["params"],
        # Snapshots written before ratings existed have none.
        train_ratings=tuple(RatedRecord.from_json(r) for r in train.get("ratings", [])),
        heldout_ratings=tuple(RatedRecord.from_json(r) for r in held.get("ratings", [])),
        train_prompts=tuple(PromptRecord.from_json(r) for r in train.get("prompts", [])),
        heldout_prompts=tuple(PromptRecord.from_json(r) for r in held.get("prompts", [])),
    )
