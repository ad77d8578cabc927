"""trainer.gates: parsing gate settings and the promote/hold decision (pure, fast)."""

from __future__ import annotations

import math

import pytest

from core.errors import TailorError
from trainer.evaluate import Comparison, Metrics
from trainer.gates import GateConfig, decide


def metrics(
    em: float = 0.5,
    f1: float = 0.6,
    ppl: float = 10.0,
    win: float | None = None,
    n: int = 50,
) -> Metrics:
    return Metrics(
        n=n,
        exact_match=em,
        token_f1=f1,
        perplexity=ppl,
        win_rate=win,
        judged=n if win is not None else 0,
    )


def comparison(candidate: Metrics, baseline: Metrics) -> Comparison:
    return Comparison(candidate=candidate, baseline=baseline, examples=[])


# --- GateConfig.from_dict -------------------------------------------------------------


def test_from_dict_defaults_and_merging() -> None:
    assert GateConfig.from_dict(None) == GateConfig()
    assert GateConfig.from_dict({}) == GateConfig()
    g = GateConfig.from_dict(
        {
            "primary_metric": "token_f1",
            "min_improvement": 0.01,
            "noise": {"exact_match": 0.1},
            "min_examples": 5,
        }
    )
    assert g.primary_metric == "token_f1" and g.min_improvement == 0.01 and g.min_examples == 5
    # keys not given keep their defaults
    assert g.noise == {
        "exact_match": 0.1,
        "token_f1": 0.02,
        "perplexity_ratio": 0.05,
        "win_rate": 0.05,
        "grader_score": 0.02,
    }
    assert GateConfig.from_dict(g.to_dict()) == g
    # the default noise dict is not shared between instances
    GateConfig().noise["exact_match"] = 9
    assert GateConfig().noise["exact_match"] == 0.02


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"primary": "exact_match"}, "unknown gate setting"),
        ({"primary_metric": "bleu"}, "unknown primary_metric"),
        ({"noise": {"bleu": 0.1}}, "unknown noise metric"),
        ({"noise": {"perplexity": 0.1}}, "unknown noise metric"),  # it is perplexity_ratio
        ({"noise": [0.1]}, "must be an object"),
        ({"noise": {"exact_match": -0.1}}, ">= 0"),
        ({"noise": {"exact_match": "0.1"}}, ">= 0"),
        ({"min_improvement": float("nan")}, ">= 0"),
        ({"min_examples": 0}, ">= 1"),
        ({"min_examples": True}, ">= 1"),
        ("exact_match", "JSON object"),
    ],
)
def test_from_dict_rejects_bad_settings(d: object, match: str) -> None:
    with pytest.raises(TailorError, match=match) as info:
        GateConfig.from_dict(d)  # type: ignore[arg-type]
    assert info.value.status == 400


# --- decide ---------------------------------------------------------------------------


def test_better_on_primary_and_nothing_worse_promotes() -> None:
    d = decide(
        comparison(metrics(em=0.9, f1=0.95, ppl=8.0), metrics(em=0.4, f1=0.6, ppl=10.0)),
        GateConfig(),
    )
    assert d.promote
    assert d.reasons[0] == "exact_match 0.40 -> 0.90 (+0.50): better [primary]"
    assert d.reasons[1] == "token_f1 0.60 -> 0.95 (+0.35): better"
    assert d.reasons[2] == "perplexity 10 -> 8 (-20%): better"
    assert d.reasons[-1].startswith("promote:")


def test_primary_not_better_holds() -> None:
    d = decide(comparison(metrics(em=0.5), metrics(em=0.5)), GateConfig())
    assert not d.promote
    assert d.reasons[0] == "exact_match 0.50 -> 0.50 (+0.00): not better [primary]"
    assert d.reasons[-1] == "hold: exact_match did not improve"
    # a gain smaller than min_improvement is not enough either
    d = decide(comparison(metrics(em=0.53), metrics(em=0.5)), GateConfig(min_improvement=0.05))
    assert not d.promote and "not better by more than 0.05" in d.reasons[0]


def test_regression_beyond_noise_holds_within_noise_passes() -> None:
    base = metrics(em=0.4, f1=0.6, ppl=12.1)
    d = decide(comparison(metrics(em=0.9, f1=0.6, ppl=13.9), base), GateConfig())
    assert not d.promote
    assert "perplexity 12.1 -> 13.9 (+15%): worse beyond noise 5%" in d.reasons
    assert d.reasons[-1] == "hold: perplexity regressed beyond noise"
    # +4% perplexity and -0.01 F1 are within the default noise
    d = decide(comparison(metrics(em=0.9, f1=0.59, ppl=12.1 * 1.04), base), GateConfig())
    assert d.promote, d.reasons
    assert d.reasons[1] == "token_f1 0.60 -> 0.59 (-0.01): within noise 0.02"
    # F1 down 0.10 is a real regression
    d = decide(comparison(metrics(em=0.9, f1=0.5, ppl=12.1), base), GateConfig())
    assert not d.promote and "token_f1 0.60 -> 0.50 (-0.10): worse beyond noise 0.02" in d.reasons


def test_win_rate_gate() -> None:
    base = metrics(em=0.4, win=0.6)
    gates = GateConfig()
    d = decide(comparison(metrics(em=0.9, win=0.4), base), gates)
    assert not d.promote
    assert "win_rate 0.40 over 50 judged pair(s): worse beyond noise (needs >= 0.45)" in d.reasons
    d = decide(comparison(metrics(em=0.9, win=0.47), base), gates)
    assert d.promote, d.reasons
    # win_rate as primary: must beat an even split
    wr = GateConfig(primary_metric="win_rate")
    assert decide(comparison(metrics(win=0.7), metrics(win=0.3)), wr).promote
    assert not decide(comparison(metrics(win=0.5), metrics(win=0.5)), wr).promote
    # ... and with no judge there is nothing to promote on
    d = decide(comparison(metrics(em=0.9), metrics(em=0.4)), wr)
    assert not d.promote and "win_rate not measured (no judge configured) [primary]" in d.reasons


def test_perplexity_as_primary_and_non_finite_values() -> None:
    gates = GateConfig(primary_metric="perplexity", min_improvement=0.1)
    assert decide(comparison(metrics(ppl=8.0), metrics(ppl=10.0)), gates).promote
    d = decide(comparison(metrics(ppl=9.5), metrics(ppl=10.0)), gates)
    assert not d.promote and d.reasons[2] == "perplexity 10 -> 9.5 (-5%): not better by more than 10% [primary]"
    d = decide(comparison(metrics(em=0.9, ppl=math.inf), metrics(ppl=10.0)), GateConfig())
    assert not d.promote and "worse (not finite)" in d.reasons[2]
    d = decide(comparison(metrics(ppl=5.0), metrics(ppl=math.nan)), gates)
    assert d.promote


def test_too_few_examples_holds() -> None:
    d = decide(comparison(metrics(em=0.9, n=3), metrics(em=0.1, n=3)), GateConfig(min_examples=10))
    assert not d.promote
    assert "only 3 held-out example(s); at least 10 needed" in d.reasons
    assert d.reasons[-1] == "hold: too few examples"


def graded(score: float) -> Metrics:
    return Metrics(n=20, exact_match=0.0, token_f1=0.0, perplexity=math.nan, win_rate=None, grader_score=score)


def test_a_graded_comparison_is_gated_on_the_grader_score_alone() -> None:
    # whatever the tenant's primary metric: a reinforcement job has no references to score
    gates = GateConfig.from_dict({"primary_metric": "token_f1"})
    up = decide(comparison(graded(0.8), graded(0.3)), gates)
    assert up.promote, up.reasons
    assert up.reasons[0] == "grader_score 0.30 -> 0.80 (+0.50): better [primary]"
    assert not any(r.startswith(("exact_match", "token_f1", "perplexity")) for r in up.reasons)
    same = decide(comparison(graded(0.3), graded(0.3)), gates)
    assert not same.promote and same.reasons[-1] == "hold: grader_score did not improve"
    worse = decide(comparison(graded(0.2), graded(0.3)), GateConfig.from_dict({"noise": {"grader_score": 0.05}}))
    assert not worse.promote and "regressed" in worse.reasons[-1]
