"""How long "auto" trains: a validation slice of the training rows, and the rules of early stopping.

When a job leaves both n_epochs and max_steps at "auto", the run does not guess a number of
passes from the data size: it trains up to a budget, evaluates every `eval_every` steps on
validation rows held back from the TRAINING rows (never the job's held-out split, which the
gates score afterwards), stops once `patience` evaluations in a row bring no progress, and
keeps the adapter of the best evaluation. This module decides the sizes, from the number of
training rows alone, and splits the rows; trainer.hyperparameters puts the numbers in the
resolved hyperparameters and trainer.compute runs them. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from trainer.records import prompt_key

# --- the validation slice ------------------------------------------------------------------
# Below MIN_ROWS training rows, no slice: every row is needed to learn from, and a handful of
# validation rows would make the stopping decision noise. Such jobs train the fixed epochs
# of trainer.hyperparameters (up to 25 passes), as before early stopping existed.
MIN_ROWS = 20
VALIDATION_FRACTION = 0.1
MIN_VALIDATION = 8
MAX_VALIDATION = 100


def validation_size(n_rows: int) -> int:
    """Rows to hold back for validation out of n_rows training rows; 0: no early stopping."""
    if n_rows < MIN_ROWS:
        return 0
    return min(MAX_VALIDATION, max(MIN_VALIDATION, round(VALIDATION_FRACTION * n_rows)))


def row_prompt(row: dict[str, Any]) -> Sequence[dict[str, str]]:
    """The prompt of a training row of any method: what a validation row must not share with training."""
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
        return messages[:last]
    return row["prompt"]


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(json.dumps([seed, key]).encode()).digest()


def split_validation(
    rows: Sequence[dict[str, Any]], size: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, validation rows): about `size` rows held back, chosen by `seed`.

    Rows sharing a prompt go to the same side (a DPO prompt with several pairs, a repeated
    question), else validation would score answers the run trained on. Prompts are drawn by a
    hash of (seed, prompt), so the split depends on neither the rows' order nor on Python's
    hash seed: a retried job splits its rows the same way. Whole prompts are taken until at
    least `size` rows are held back; both sides keep the rows' original order.
    """
    if size <= 0:
        return list(rows), []
    keys = [prompt_key(row_prompt(row)) for row in rows]
    per_key = Counter(keys)
    held: set[str] = set()
    count = 0
    for key in sorted(per_key, key=lambda k: _rank(seed, k)):
        if count >= size:
            break
        held.add(key)
        count += per_key[key]
    train = [row for row, key in zip(rows, keys, strict=True) if key not in held]
    if not train:  # every row shares one prompt: nothing would be left to learn from
        return list(rows), []
    return train, [row for row, key in zip(rows, keys, strict=True) if key in held]


# --- budget, cadence, patience ---------------------------------------------------------------
# The budget is an upper bound on the examples seen (BUDGET_EXAMPLES, so on cost), in whole
# passes between MIN_BUDGET_EPOCHS and MAX_BUDGET_EPOCHS: small datasets need many passes
# before their answers stick, large ones learn the task within a pass or two. Early stopping
# is expected to end a run well before it; the budget only bounds a run that keeps improving.
BUDGET_EXAMPLES = 2000
MIN_BUDGET_EPOCHS = 3
MAX_BUDGET_EPOCHS = 20
# Evaluations per pass over the training rows, and the bounds on the steps between two: often
# enough that the stop comes soon after the best step, rarely enough that evaluating (a forward
# pass over the validation rows) stays a small share of the run.
EVALS_PER_EPOCH = 4
MIN_EVAL_EVERY = 5
MAX_EVAL_EVERY = 200
# Evaluations in a row without a better score before the run stops: one bad evaluation is
# noise on a small validation slice, three in a row is a trend.
PATIENCE = 3
# A budget this short still gets this many evaluations (an explicit max_steps can be short).
MIN_EVALUATIONS = PATIENCE + 2


def budget_epochs(n_train: int) -> int:
    """Passes over n_train training rows (after the validation slice) that the run may take at most."""
    return min(MAX_BUDGET_EPOCHS, max(MIN_BUDGET_EPOCHS, math.ceil(BUDGET_EXAMPLES / max(1, n_train))))


def eval_every(n_train: int, batch_size: int, budget_steps: int) -> int:
    """Optimizer steps between evaluations for n_train training rows and a budget of budget_steps."""
    steps_per_epoch = math.ceil(max(1, n_train) / max(1, batch_size))
    every = min(MAX_EVAL_EVERY, max(MIN_EVAL_EVERY, round(steps_per_epoch / EVALS_PER_EPOCH)))
    return max(1, min(every, budget_steps // MIN_EVALUATIONS))
