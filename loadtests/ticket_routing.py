"""A generated domain task the base model cannot do: routing support tickets to queue codes.

A company routes tickets to internal queues named by codes no model has seen ("BILL-7",
"SHIP-3", ...). The base model answers with prose or made-up codes; an adapter trained on
a few dozen corrected examples answers with the right code. Used by the end-to-end test
and by `loadtests/bench_adaptation.py`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SYSTEM_PROMPT = "You route customer support tickets. Reply with the queue code only."

QUEUES: dict[str, tuple[list[str], list[str]]] = {
    # code: (ticket openings, details)
    "BILL-7": (
        [
            "I was charged twice for",
            "My invoice is wrong for",
            "I need a refund for",
            "Why was my card billed again for",
            "There is an unknown fee on",
        ],
        ["my monthly subscription", "the annual plan", "last month's payment", "my order 4471", "the premium upgrade"],
    ),
    "SHIP-3": (
        [
            "My package has not arrived for",
            "The tracking number does not work for",
            "The courier lost",
            "Delivery went to the wrong address for",
            "The parcel is delayed for",
        ],
        ["my order 4471", "the replacement part", "my new headphones", "the gift I sent", "the spare charger"],
    ),
    "AUTH-2": (
        [
            "I cannot log in to",
            "The password reset email never arrives for",
            "My two-factor code is rejected by",
            "I am locked out of",
            "Someone changed the password of",
        ],
        ["my account", "the mobile app", "the admin console", "my work profile", "the web dashboard"],
    ),
    "HW-9": (
        [
            "The screen is cracked on",
            "The battery drains in an hour on",
            "There is no sound from",
            "The power button is stuck on",
            "The charging port is broken on",
        ],
        ["my tablet", "the new phone", "my laptop", "the smartwatch", "the speaker"],
    ),
}


@dataclass(frozen=True)
class Ticket:
    text: str
    queue: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": self.text}]


def tickets(per_queue: int = 8, seed: int = 0) -> list[Ticket]:
    """`per_queue` distinct tickets for every queue, shuffled reproducibly."""
    rng = random.Random(seed)
    out: list[Ticket] = []
    for code, (openings, details) in QUEUES.items():
        pairs = [(o, d) for o in openings for d in details]
        rng.shuffle(pairs)
        out += [Ticket(f"{o} {d}.", code) for o, d in pairs[:per_queue]]
    rng.shuffle(out)
    return out


_CODE = re.compile(r"\b(BILL-7|SHIP-3|AUTH-2|HW-9)\b")


def predicted_queue(answer: str) -> str | None:
    """The queue code an answer names first, if any."""
    found = _CODE.search(answer or "")
    return found.group(1) if found else None


def accuracy(answers: list[str], expected: list[Ticket]) -> float:
    hits = sum(predicted_queue(a) == t.queue and a.strip() == t.queue for a, t in zip(answers, expected, strict=False))
    return hits / max(1, len(expected))
