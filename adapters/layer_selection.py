"""Which decoder layers a derived model keeps: `every-other`, `first:N`, `spread:N` or `0,2,5`.

A derived model (adapters.derived_model) is its source with some decoder layers left out.
The choice is written as a short spec, so the CLI, a job or a test can name it:

    every-other   the even layers 0, 2, 4, ..., always ending with the source's last layer
    first:N       layers 0 .. N-1
    spread:N      N layers evenly spaced from the first to the last
    0,2,5,29      exactly these layers, ascending

Why `every-other` ends with the last layer: the first and last layers are the ones a model
can least do without (the first turns embeddings into the residual stream the others read,
the last writes what the final norm and the language-model head read back; layer-pruning
studies such as ShortGPT and Gromov et al. 2024 find them the least redundant). With an odd
layer count the even layers end there anyway; with an even count (SmolLM2's 30) the last even
layer gives way to the last one, so the count is still half: 0, 2, ..., 26, 29. On
SmolLM2-135M-Instruct that start is closer to the source than 0, 2, ..., 28 (KL divergence
from the source's next-token distribution 9.8 against 11.4 nats a token, on 1,024 tokens of
English prose; 1, 3, ..., 29 and spread:15 are further still). Any half of the layers still
needs training (distillation) before it answers sensibly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from core.errors import TailorError, bad_request

PARAM = "keep_layers"
# At most 9 digits a number: more is no model's layer, and int() of thousands of digits is
# refused by Python (a ValueError, not the 400 this module owes its caller).
_COUNTED = re.compile(r"(first|spread):(\d{1,9})")
_INDICES = re.compile(r"\d{1,9}(,\d{1,9})*")


def select_layers(spec: str | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """The source layer indices a spec keeps, ascending; a clear 400 for anything else."""
    if num_layers < 1:
        raise _invalid(f"the source model has {num_layers} layers; it needs at least one to keep")
    if not isinstance(spec, str):
        return check_indices(spec, num_layers)
    text = spec.strip().replace(" ", "")
    if text == "every-other":
        return every_other(num_layers)
    if counted := _COUNTED.fullmatch(text):
        kind, count = counted.group(1), int(counted.group(2))
        if not 1 <= count <= num_layers:
            raise _invalid(f"{kind}:{count} asks for {count} layers; the source has {num_layers} (1 to {num_layers})")
        return tuple(range(count)) if kind == "first" else spread(count, num_layers)
    if _INDICES.fullmatch(text):
        return check_indices([int(part) for part in text.split(",")], num_layers)
    raise _invalid(
        f"cannot read keep-layers {spec!r}: use every-other, first:N, spread:N or ascending indices such as 0,2,5"
    )


def every_other(num_layers: int) -> tuple[int, ...]:
    """0, 2, 4, ... with the last layer in place of the last even one (see the module docstring)."""
    kept = list(range(0, num_layers, 2))
    kept[-1] = num_layers - 1
    return tuple(kept)


def spread(count: int, num_layers: int) -> tuple[int, ...]:
    """`count` layers evenly spaced over `num_layers`, first and last included (count 1: the first)."""
    if count == 1:
        return (0,)
    step = (num_layers - 1) / (count - 1)
    # Half up, not Python's half-to-even: with step >= 1 this keeps the indices strictly rising.
    return tuple(math.floor(i * step + 0.5) for i in range(count))


def check_indices(indices: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """`indices` as a tuple when they are in range, unique, ascending and not empty."""
    kept = tuple(indices)
    if not kept:
        raise _invalid("keep at least one layer")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in kept):
        raise _invalid(f"layer indices must be integers, got {list(kept)!r}")
    outside = [i for i in kept if not 0 <= i < num_layers]
    if outside:
        raise _invalid(f"layer indices {outside} are out of range: the source has layers 0 to {num_layers - 1}")
    repeated = sorted({i for i in kept if kept.count(i) > 1})
    if repeated:
        raise _invalid(f"layer indices {repeated} are named more than once")
    if list(kept) != sorted(kept):
        # A different order would be another model, not a subset of this one.
        raise _invalid(f"layer indices must be ascending, got {list(kept)}")
    return kept


def _invalid(message: str) -> TailorError:
    return bad_request(message, code="invalid_keep_layers", param=PARAM)
