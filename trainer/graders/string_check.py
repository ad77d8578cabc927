"""The string_check grader: 1.0 or 0.0 from one comparison, as OpenAI defines them.

eq: the input equals the reference; ne: it does not; like: the input contains the reference;
ilike: the same, ignoring case. All but ilike are case-sensitive.
"""

from __future__ import annotations

from trainer.graders.spec import StringCheckGrader


def score(grader: StringCheckGrader, text: str, reference: str) -> float:
    op = grader.operation
    if op == "eq":
        hit = text == reference
    elif op == "ne":
        hit = text != reference
    elif op == "like":
        hit = reference in text
    else:
        hit = reference.casefold() in text.casefold()
    return 1.0 if hit else 0.0
