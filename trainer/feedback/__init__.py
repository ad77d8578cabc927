"""Feedback from product teams: ratings, scores, corrections and preferences.

Feedback either points at a logged interaction of the tenant (the usual case: a thumbs
up/down or a fixed answer for something the gateway served) or, in a bulk import, carries
its own prompt (`messages`) for examples that never went through the gateway.

Fields, all optional but at least one of rating / score / correction / preferred:

- `rating`: "good" or "bad".
- `score`: a float in [0, 1] (not 1-5: one scale, no guessing which one a client meant);
  without a rating, a score of 0.5 or more reads as good (verdicts).
- `correction`: the answer that should have been given (alias `ideal` in imports).
- `preferred` / `rejected`: a preference pair. `preferred` alone means "better than the
  logged answer"; with `rejected`, the pair is explicit.

Rows are append-only: a later rating of the same interaction outweighs an earlier one when
datasets and signals are computed, nothing is overwritten.

Callers may pass `redact` (a text -> text function, e.g. gateway.redaction.redact_text
for tenants that asked for it): it is applied to every stored text (correction, preferred,
rejected, imported messages) after validation, so what a client sent is checked as sent.

Modules: verdicts (how feedback reads), fields (the checks), record (one piece on a logged
interaction), bulk_import, reading (the list and the signal), interactions (the logged
answers feedback points at).
"""

from trainer.feedback.bulk_import import MAX_IMPORT_BYTES, ImportResult, import_feedback_jsonl
from trainer.feedback.reading import MAX_LIST_LIMIT, FeedbackPage, FeedbackSignal, feedback_signal, list_feedback
from trainer.feedback.record import FeedbackInfo, Redactor, record_feedback

__all__ = [
    "MAX_IMPORT_BYTES",
    "MAX_LIST_LIMIT",
    "FeedbackInfo",
    "FeedbackPage",
    "FeedbackSignal",
    "ImportResult",
    "Redactor",
    "feedback_signal",
    "import_feedback_jsonl",
    "list_feedback",
    "record_feedback",
]
