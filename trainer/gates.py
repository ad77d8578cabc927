"""Promotion gates: should a freshly trained adapter replace the current one?

The rule: the candidate must be BETTER than the baseline on the primary metric (by more
than `min_improvement`) and NOT WORSE beyond a per-metric noise tolerance on any other
metric that was measured. Held-out sets for a tenant are small, so a few points of
movement are noise; the tolerances keep a real gain on the primary metric from being
blocked by jitter elsewhere, while still catching a real regression.

    from trainer.gates import GateConfig, decide
    gates = GateConfig.from_dict({"primary_metric": "token_f1", "noise": {"exact_match": 0.05}})
    decision = decide(comparison, gates)      # comparison from trainer.evaluate.compare
    decision.promote, decision.reasons

How each metric is compared (candidate vs baseline):
  exact_match, token_f1  higher is better; difference in absolute points
  perplexity             lower is better; compared as the ratio candidate / baseline,
                         so the tolerance ("perplexity_ratio") is relative: 0.05 = +5%
  win_rate               the judge's share for the candidate (0.5 = no preference);
                         only when a judge ran; must be >= 0.5 - noise
  grader_score           a reinforcement job's grader (its mean score, higher is better):
                         the primary metric whenever it was measured, and then the only one
                         (its prompts have no reference answer to score the others against)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from core.errors import bad_request
from trainer.evaluate import Comparison, Metrics

PRIMARY_METRICS = ("exact_match", "token_f1", "perplexity", "win_rate")
NOISE_KEYS = ("exact_match", "token_f1", "perplexity_ratio", "win_rate", "grader_score")
GRADER_SCORE = "grader_score"


def _default_noise() -> dict[str, float]:
    # about one example in fifty for the rate metrics, 5% for perplexity and the judge
    return {"exact_match": 0.02, "token_f1": 0.02, "perplexity_ratio": 0.05, "win_rate": 0.05, GRADER_SCORE: 0.02}


@dataclass
class GateConfig:
    # The metric that must improve. exact_match suits short factual answers; token_f1
    # longer ones; win_rate needs a judge; perplexity works without generation quality.
    primary_metric: str = "exact_match"
    # Required gain on the primary metric: candidate > baseline + min_improvement (in
    # points; for perplexity a relative drop: candidate < baseline * (1 - min_improvement);
    # for win_rate: candidate > 0.5 + min_improvement).
    min_improvement: float = 0.0
    # Tolerated regression per metric before it blocks promotion. Keys missing from a
    # dict given to from_dict keep these defaults.
    noise: dict[str, float] = field(default_factory=_default_noise)
    # Fewer held-out examples than this and nothing is promoted: the numbers mean nothing.
    min_examples: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GateConfig:
        """Build from user JSON (a tenant policy); TailorError 400 on anything unknown."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise bad_request("gates must be a JSON object", param="gates")
        known = {"primary_metric", "min_improvement", "noise", "min_examples"}
        if unknown := sorted(set(d) - known):
            raise bad_request(
                f"unknown gate setting(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}",
                param="gates",
            )
        gates = cls()
        if "primary_metric" in d:
            if d["primary_metric"] not in PRIMARY_METRICS:
                raise bad_request(
                    f"unknown primary_metric {d['primary_metric']!r}; expected one of {', '.join(PRIMARY_METRICS)}",
                    param="gates.primary_metric",
                )
            gates.primary_metric = d["primary_metric"]
        if "min_improvement" in d:
            gates.min_improvement = _non_negative(d["min_improvement"], "gates.min_improvement")
        if "noise" in d:
            noise = d["noise"]
            if not isinstance(noise, dict):
                raise bad_request("gates.noise must be an object", param="gates.noise")
            if unknown := sorted(set(noise) - set(NOISE_KEYS)):
                raise bad_request(
                    f"unknown noise metric(s) {', '.join(map(str, unknown))}; expected {', '.join(NOISE_KEYS)}",
                    param="gates.noise",
                )
            for key, value in noise.items():
                gates.noise[key] = _non_negative(value, f"gates.noise.{key}")
        if "min_examples" in d:
            n = d["min_examples"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise bad_request("gates.min_examples must be an integer >= 1", param="gates.min_examples")
            gates.min_examples = n
        return gates

    def to_dict(self) -> dict[str, Any]:
        return {
            "primary_metric": self.primary_metric,
            "min_improvement": self.min_improvement,
            "noise": dict(self.noise),
            "min_examples": self.min_examples,
        }


def _non_negative(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"{param} must be a number >= 0", param=param)
    try:
        number = float(value)  # a huge JSON integer does not fit a float
    except OverflowError:
        raise bad_request(f"{param} must be a number >= 0", param=param) from None
    if not math.isfinite(number) or number < 0:
        raise bad_request(f"{param} must be a number >= 0", param=param)
    return number


@dataclass
class Decision:
    promote: bool
    reasons: list[str]  # one line per metric, then the verdict

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": list(self.reasons)}


# -----------------------------------------------------------------------------
# per-metric checks: each returns (better, worse_beyond_noise, reason line)

Check = tuple[bool, bool, str]


def _points(name: str, c: float, b: float, noise: float, need: float | None) -> Check:
    """Higher-is-better rate; need is the required gain when this is the primary metric."""
    delta = c - b
    head = f"{name} {b:.2f} -> {c:.2f} ({delta:+.2f})"
    if need is not None:
        better = delta > need
        if better:
            return True, False, f"{head}: better" + (f" by more than {need:.2f}" if need else "")
        if delta < -noise:
            return False, True, f"{head}: worse beyond noise {noise:.2f}"
        return False, False, f"{head}: not better" + (f" by more than {need:.2f}" if need else "")
    if delta < -noise:
        return False, True, f"{head}: worse beyond noise {noise:.2f}"
    if delta > 0:
        return True, False, f"{head}: better"
    return False, False, f"{head}: " + ("same" if delta == 0 else f"within noise {noise:.2f}")


def _perplexity(c: float, b: float, noise: float, need: float | None) -> Check:
    """Lower is better, compared as a ratio so the tolerance is relative."""
    if not math.isfinite(c) and math.isfinite(b):
        return False, True, f"perplexity {b:.3g} -> {c}: worse (not finite)"
    if not math.isfinite(b):
        better = math.isfinite(c)
        return (
            better,
            False,
            f"perplexity {b} -> {c:.3g}: " + ("better" if better else "not comparable"),
        )
    ratio = c / b if b > 0 else math.inf
    head = f"perplexity {b:.3g} -> {c:.3g} ({ratio - 1:+.0%})"
    if need is not None and ratio < 1 - need:
        return True, False, f"{head}: better" + (f" by more than {need:.0%}" if need else "")
    if ratio > 1 + noise:
        return False, True, f"{head}: worse beyond noise {noise:.0%}"
    if need is not None:
        return False, False, f"{head}: not better" + (f" by more than {need:.0%}" if need else "")
    if ratio < 1:
        return True, False, f"{head}: better"
    return False, False, f"{head}: " + ("same" if ratio == 1 else f"within noise {noise:.0%}")


def _win_rate(w: float, judged: int, noise: float, need: float | None) -> Check:
    head = f"win_rate {w:.2f} over {judged} judged pair(s)"
    floor = 0.5 - noise
    if need is not None and w > 0.5 + need:
        return True, False, f"{head}: better (needs > {0.5 + need:.2f})"
    if w < floor:
        return False, True, f"{head}: worse beyond noise (needs >= {floor:.2f})"
    if need is not None:
        return False, False, f"{head}: not better (needs > {0.5 + need:.2f})"
    return w > 0.5, False, f"{head}: " + ("better" if w > 0.5 else f"within noise (>= {floor:.2f})")


def decide(comparison: Comparison, gates: GateConfig) -> Decision:
    """Promote iff enough examples, the primary metric improved and nothing regressed
    beyond noise. Reasons list every metric, then the verdict line."""
    cand: Metrics = comparison.candidate
    base: Metrics = comparison.baseline
    graded = cand.grader_score is not None and base.grader_score is not None
    primary = GRADER_SCORE if graded else gates.primary_metric
    noise = {**_default_noise(), **gates.noise}
    reasons: list[str] = []
    regressed: list[str] = []
    primary_better = False

    def record(metric: str, check: Check) -> None:
        nonlocal primary_better
        better, worse, line = check
        reasons.append(line + (" [primary]" if metric == primary else ""))
        if worse:
            regressed.append(metric)
        if metric == primary:
            primary_better = better

    def need(metric: str) -> float | None:
        return gates.min_improvement if metric == primary else None

    if graded:
        c_score, b_score = cand.grader_score or 0.0, base.grader_score or 0.0
        record(GRADER_SCORE, _points(GRADER_SCORE, c_score, b_score, noise[GRADER_SCORE], need(GRADER_SCORE)))
    for metric in ("exact_match", "token_f1") if not graded else ():
        record(
            metric,
            _points(metric, getattr(cand, metric), getattr(base, metric), noise[metric], need(metric)),
        )
    if not graded:
        record(
            "perplexity",
            _perplexity(cand.perplexity, base.perplexity, noise["perplexity_ratio"], need("perplexity")),
        )
    if cand.win_rate is not None:
        record("win_rate", _win_rate(cand.win_rate, cand.judged, noise["win_rate"], need("win_rate")))
    elif primary == "win_rate":
        reasons.append("win_rate not measured (no judge configured) [primary]")

    too_few = cand.n < gates.min_examples
    if too_few:
        reasons.append(f"only {cand.n} held-out example(s); at least {gates.min_examples} needed")
    promote = primary_better and not regressed and not too_few
    if promote:
        verdict = f"promote: {primary} improved and no metric regressed beyond noise"
    else:
        why = []
        if not primary_better:
            why.append(f"{primary} did not improve")
        if regressed:
            why.append(f"{', '.join(regressed)} regressed beyond noise")
        if too_few:
            why.append("too few examples")
        verdict = "hold: " + "; ".join(why)
    reasons.append(verdict)
    return Decision(promote=promote, reasons=reasons)
