"""A dataset from the tenant's feedback: rated, corrected and preferred answers, and
imported examples.

Every judgement of an answer is folded into the examples it teaches (`_Judged`), and the
examples of all answers de-duplicated (`_Candidates`) before the split.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from core.blobs import BlobStore
from core.db import Database
from core.errors import bad_request
from core.ids import as_utc
from core.models import Feedback
from trainer.datasets.heldout import check_split_params
from trainer.datasets.store import store_records
from trainer.feedback.interactions import logged_answer, tenant_interactions
from trainer.feedback.verdicts import Verdict, verdict
from trainer.message_checks import ROLES
from trainer.records import (
    Message,
    PreferenceRecord,
    RatedRecord,
    SFTRecord,
    Snapshot,
    as_messages,
    normalise_text,
    prompt_key,
    sorted_records,
)

CHAT_ENDPOINT = "chat.completions"
# Endpoints whose logged request is a chat request (`messages`): the Responses API logs the
# chat request it was answered with, the whole conversation included.
CHAT_FORM_ENDPOINTS = frozenset({CHAT_ENDPOINT, "responses"})


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
        return sorted_records(sft), sorted_records(list(self.preferences.values()))


def _pick(old: tuple[int, SFTRecord] | None, new: tuple[int, SFTRecord]) -> tuple[int, SFTRecord]:
    # Among duplicates the higher priority wins, then the first seen (answers are emitted
    # in the order of their oldest feedback): a choice that newer data never changes.
    if old is None or new[0] > old[0]:
        return new
    return old


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
    messages = as_messages(fb.messages or [])
    if not messages:
        return None
    response = None
    if messages[-1]["role"] == "assistant":
        response, messages = messages[-1]["content"], messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        return None
    return _Judged(prompt=messages, response=response)


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
    check_split_params(heldout_fraction, min_heldout)
    query = select(Feedback).where(Feedback.tenant_id == tenant_id)
    if model is not None:
        query = query.where((Feedback.model == model) | Feedback.model.is_(None))
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    query = query.order_by(Feedback.created_at, Feedback.id)

    with db.session() as s:
        rows = list(s.scalars(query))
        interactions = tenant_interactions(s, tenant_id, (r.interaction_id for r in rows if r.interaction_id))

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
                response = logged_answer(inter) if inter else None
                judged[key] = _Judged(prompt, response) if prompt else None
        item = judged[key]
        if item is not None:
            item.add(fb)

    candidates = _Candidates()
    for item in judged.values():
        if item is not None:
            item.emit(candidates)
    sft, preferences = candidates.result()
    ratings = sorted_records(list(candidates.ratings.values()))
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
    return store_records(
        db,
        blobs,
        tenant_id,
        "feedback",
        params,
        train=[*sft, *preferences, *ratings],
        heldout=None,
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
