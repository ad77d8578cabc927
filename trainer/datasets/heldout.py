"""The held-out split: which examples a run trains on and which it is judged on.

Decided per normalised prompt by a hash, never by a random draw: the same prompt never
lands on both sides (no leak of a training answer into the judge's questions), and adding
data later never moves an old example across the split.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence

from core.errors import bad_request
from trainer.records import Record, prompt_key


def check_split_params(heldout_fraction: float, min_heldout: int) -> None:
    if not (
        isinstance(heldout_fraction, int | float) and 0 <= heldout_fraction < 1 and math.isfinite(heldout_fraction)
    ):
        raise bad_request(f"heldout_fraction must be in [0, 1) (got {heldout_fraction!r})", param="heldout_fraction")
    if not isinstance(min_heldout, int) or min_heldout < 0:
        raise bad_request(f"min_heldout must be a non-negative integer (got {min_heldout!r})", param="min_heldout")


def bucket(key: str) -> float:
    """A stable position in [0, 1) for a prompt; below the held-out fraction: held out."""
    digest = hashlib.sha256(b"tailor-heldout\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(records: Sequence[Record], heldout_fraction: float, min_heldout: int) -> tuple[list[Record], list[Record]]:
    """(train, heldout) by prompt hash; at least `min_heldout` held out when possible.

    Possible means: at least two examples with at least two distinct prompts, because a
    prompt is never split and at least one prompt always stays for training.
    """
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[prompt_key(r.prompt)].append(r)
    order = sorted(groups, key=lambda k: (bucket(k), k))
    held = {k for k in order if bucket(k) < heldout_fraction}
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
