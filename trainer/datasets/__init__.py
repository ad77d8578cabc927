"""Immutable dataset snapshots: what a run learns from and is judged on.

A `Snapshot` (trainer.records) is a frozen set of examples split into train and held-out
parts. Its id is a hash of its content and build parameters, so building twice from the
same data gives the same id, one blob and one `Dataset` row (store).

Sources:

- `build_from_feedback` (from_feedback): the tenant's rated / corrected interactions and
  imported examples.
- `build_from_files` (from_files): an uploaded training file (and optional validation file).
- `build_from_answers` (from_answers): a teacher's answers (distillation).
- `build_from_log` (from_log): the prompts the tenant's users sent a model (reinforcement).

The held-out split is decided per normalised prompt by a hash (heldout). The record types and
the message checks are trainer.records' and trainer.message_checks', named here too for the
callers that read everything about datasets from one place.
"""

from trainer.datasets.from_answers import build_from_answers
from trainer.datasets.from_feedback import CHAT_ENDPOINT, build_from_feedback, prompt_from_request
from trainer.datasets.from_files import build_from_files
from trainer.datasets.from_log import build_from_log
from trainer.datasets.heldout import split
from trainer.datasets.store import load_snapshot
from trainer.feedback.verdicts import GOOD_SCORE, verdict
from trainer.message_checks import InvalidExample, check_messages
from trainer.records import (
    Message,
    PreferenceRecord,
    PromptRecord,
    RatedRecord,
    SFTRecord,
    Snapshot,
    normalise_text,
    prompt_key,
)

__all__ = [
    "CHAT_ENDPOINT",
    "GOOD_SCORE",
    "InvalidExample",
    "Message",
    "PreferenceRecord",
    "PromptRecord",
    "RatedRecord",
    "SFTRecord",
    "Snapshot",
    "build_from_answers",
    "build_from_feedback",
    "build_from_files",
    "build_from_log",
    "check_messages",
    "load_snapshot",
    "normalise_text",
    "prompt_from_request",
    "prompt_key",
    "split",
    "verdict",
]
