"""OpenAI's string_check operations, as (operation, answer, reference, score) cases.

Shared by the two places that run the grader (trainer.graders for evaluation jobs,
trainer.rewards for reinforcement training): both must score every case the same.
"""

from __future__ import annotations

STRING_CHECK_CASES = [
    ("eq", "Paris", "Paris", 1.0),
    ("eq", "paris", "Paris", 0.0),
    ("eq", "BILL-7.", "BILL-7", 0.0),
    ("ne", "Lyon", "Paris", 1.0),
    ("ne", "Paris", "Paris", 0.0),
    ("like", "It is Paris.", "Paris", 1.0),
    ("like", "It is paris.", "Paris", 0.0),
    ("like", "The queue is BILL-7.", "BILL-7", 1.0),
    ("ilike", "IT IS PARIS.", "paris", 1.0),
    ("ilike", "the queue is bill-7.", "BILL-7", 1.0),
    ("ilike", "Lyon", "paris", 0.0),
]
