"""Model selection: a fine-tuning job that names several candidate bases (`candidate_models`)
trains one adapter per base, evaluates each on its base's evaluation engine against the same
held-out rows, and keeps one.

The choice: among the candidates the gate accepts, the best on the gate's primary metric;
candidates within the gate's own noise tolerance of that best (trainer.gates: the tolerance
below which a difference counts as noise there) are equally good, and the one cheapest per
1K requests among them wins (the better, then the first named, of equally cheap ones). When no
candidate passes, the same rule picks among all of them: the one kept is registered and
rejected by the gate as any job's failing candidate is.

Cost per 1K requests: the candidate's mean prompt and completion tokens on the held-out answers
at its base's own `TAILOR_PRICES` entry (per 1K tokens); an unpriced base costs 0.

    names = check_candidates(settings, body_value, model="base-a", method="supervised", full=False)
    choice = choose(figures, gates)        # figures: one CandidateFigures per candidate
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.base_models import BaseModelConfig
from core.config import Settings
from core.errors import bad_request
from trainer import job_base
from trainer.evaluate import Comparison
from trainer.gates import GateConfig

# The job config key (and the creation body's field) naming the candidate bases.
CANDIDATES_KEY = "candidate_models"
MIN_CANDIDATES, MAX_CANDIDATES = 2, 4
REQUESTS = 1000  # costs are per this many requests
# The gate's noise key for each primary metric (trainer.gates.NOISE_KEYS).
_NOISE_KEY = {"exact_match": "exact_match", "token_f1": "token_f1", "perplexity": "perplexity_ratio"}


def _refuse(message: str, code: str = "invalid_candidate_models") -> Exception:
    return bad_request(message, code=code, param=CANDIDATES_KEY)


def check_candidates(settings: Settings, given: Any, *, model: str, method: str, full: bool) -> list[BaseModelConfig]:
    """The bases `given` names, in its order: 2 to 4 distinct configured base names, each with a
    checkpoint, the job's `model` one of them, for a LoRA method that trains on any base; a 400
    naming `candidate_models` otherwise. Names are only compared with the configured bases',
    never read as a path, a URL or an adapter."""
    if not isinstance(given, list) or not all(isinstance(n, str) for n in given):
        raise _refuse("candidate_models must be a list of base model names.")
    if not MIN_CANDIDATES <= len(given) <= MAX_CANDIDATES:
        raise _refuse(f"candidate_models names {MIN_CANDIDATES} to {MAX_CANDIDATES} base models, got {len(given)}.")
    if len(set(given)) != len(given):
        raise _refuse("candidate_models names a base model twice.")
    if full or method not in job_base.ANY_BASE_METHODS:
        what = "full fine-tuning" if full else f"the {method} method"
        raise _refuse(
            f"candidate_models selects among bases for supervised, dpo and kto LoRA jobs only, not {what}.",
            code="unsupported_base_model",
        )
    bases = []
    for name in given:
        base = settings.base(name)
        if base is None:
            # The name is not echoed: it may be anything (a path, a URL, another tenant's adapter).
            raise _refuse(
                f"candidate_models names a model that is not a configured base model; "
                f"expected names among {', '.join(b.name for b in settings.bases)}.",
                code="unknown_base_model",
            )
        if base.path is None:
            raise _refuse(
                f'Base model {base.name!r} has no local checkpoint (a "path" in TAILOR_BASE_MODELS): '
                "it cannot be fine-tuned.",
                code="unsupported_base_model",
            )
        bases.append(base)
    if model not in given:
        raise _refuse(f"The job's model {model!r} must be one of candidate_models.")
    return bases


def configured_candidates(settings: Settings, config: Mapping[str, Any] | None) -> list[BaseModelConfig]:
    """The candidate bases a queued job names (none: not a selection job); 400 for one no longer
    configured."""
    names = (config or {}).get(CANDIDATES_KEY) or []
    bases = []
    for name in names:
        base = settings.base(name)
        if base is None:
            raise bad_request(
                f"The job's candidate base model {name!r} is no longer configured.",
                code="unknown_base_model",
                param=CANDIDATES_KEY,
            )
        bases.append(base)
    return bases


# -----------------------------------------------------------------------------
# figures and the choice


@dataclass(frozen=True)
class CandidateFigures:
    """One candidate's row of the selection table."""

    base: str
    metric: str  # the gate's primary metric
    quality: float | None  # its value; None: not measured
    passed: bool  # the gate would accept it against the current version
    cost_per_1k: float
    p50_latency_s: float | None
    mean_prompt_tokens: float | None
    mean_completion_tokens: float | None

    def row(self, chosen: bool) -> dict[str, Any]:
        """The report's row (strict JSON: a non-finite number is null)."""
        finite = self.quality if self.quality is not None and math.isfinite(self.quality) else None
        return {
            "base_model": self.base,
            "metric": self.metric,
            "quality": finite,
            "gate_passed": self.passed,
            "cost_per_1k_requests": round(self.cost_per_1k, 9),
            "p50_latency_s": self.p50_latency_s,
            "mean_prompt_tokens": self.mean_prompt_tokens,
            "mean_completion_tokens": self.mean_completion_tokens,
            "chosen": chosen,
        }

    def describe(self) -> str:
        quality = "not measured" if self.quality is None else f"{self.quality:.4g}"
        latency = "?" if self.p50_latency_s is None else f"{self.p50_latency_s:.3f} s"
        return (
            f"{self.base}: {self.metric} {quality} ({'passes' if self.passed else 'fails'} the gate), "
            f"{self.cost_per_1k:.4g} per 1K requests, p50 latency {latency}"
        )


def cost_per_1k(price: Mapping[str, float] | None, prompt_tokens: float, completion_tokens: float) -> float:
    """What REQUESTS requests of these mean token counts cost at `price` (per 1K tokens)."""
    price = price or {}
    per_request = (prompt_tokens * price.get("prompt", 0.0) + completion_tokens * price.get("completion", 0.0)) / 1000
    return per_request * REQUESTS


def figures(
    base: BaseModelConfig, comparison: Comparison, passed: bool, gates: GateConfig, settings: Settings
) -> CandidateFigures:
    """The candidate's row from its evaluation and the gate's verdict on it."""
    metric = gates.primary_metric
    value = getattr(comparison.candidate, metric)
    served = comparison.served
    prompt = served.mean_prompt_tokens if served else None
    completion = served.mean_completion_tokens if served else None
    return CandidateFigures(
        base=base.name,
        metric=metric,
        quality=None if value is None else float(value),
        passed=passed,
        cost_per_1k=cost_per_1k(settings.prices.get(base.name), prompt or 0.0, completion or 0.0),
        p50_latency_s=served.p50_latency_s if served else None,
        mean_prompt_tokens=prompt,
        mean_completion_tokens=completion,
    )


def _score(f: CandidateFigures) -> float:
    """Higher is better, whatever the metric (perplexity is lower-is-better); unmeasured is worst."""
    if f.quality is None or math.isnan(f.quality):
        return -math.inf
    return -f.quality if f.metric == "perplexity" else f.quality


def tolerance(gates: GateConfig) -> float:
    """The gate's noise on its primary metric: differences below it are noise."""
    return gates.noise.get(_NOISE_KEY.get(gates.primary_metric, gates.primary_metric), 0.0)


def _near(f: CandidateFigures, best: CandidateFigures, gates: GateConfig) -> bool:
    """`f` is within the gate's tolerance of `best` on the primary metric."""
    if f is best:
        return True
    if _score(f) == -math.inf:
        return False
    noise = tolerance(gates)
    if f.metric == "perplexity":  # compared as a ratio, as the gate compares it
        return best.quality is not None and f.quality is not None and f.quality <= best.quality * (1 + noise)
    return _score(best) - _score(f) <= noise


@dataclass(frozen=True)
class Choice:
    winner: int  # index into the figures
    reason: str


def choose(candidates: Sequence[CandidateFigures], gates: GateConfig) -> Choice:
    """The candidate to keep (see the module's docstring) and why, in words."""
    passing = [i for i, f in enumerate(candidates) if f.passed]
    pool = passing or list(range(len(candidates)))
    best = max(pool, key=lambda i: _score(candidates[i]))  # the first of equals
    near = [i for i in pool if _near(candidates[i], candidates[best], gates)]
    winner = min(near, key=lambda i: (candidates[i].cost_per_1k, -_score(candidates[i]), i))
    w, metric = candidates[winner], gates.primary_metric
    among = f"the {len(pool)} candidate(s) that pass the gate" if passing else "all candidates, none passing the gate"
    if len(near) == 1:
        reason = f"{w.base} is the best on {metric} among {among}"
    else:
        others = ", ".join(candidates[i].base for i in near if i != winner)
        reason = (
            f"{w.base} is within the gate's {metric} tolerance ({tolerance(gates):g}) of the best among {among}, "
            f"and the cheapest per 1K requests of those (beside {others})"
        )
    return Choice(winner=winner, reason=reason)
