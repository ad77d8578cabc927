"""OpenAI's string_check operations, as (operation, answer, reference, score) cases.

Shared by the tests of both ways the grader runs (trainer.graders' grade, for the grader
routes, and trainer.rewards, a reinforcement job's reward): both must score every case the same.
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
