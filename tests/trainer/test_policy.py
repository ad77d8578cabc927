"""trainer.policy: per-tenant retraining policies and the drift of a promoted version.

Real SQLite in tmp_path, real tenants, adapter versions registered from a tiny valid LoRA;
feedback and interactions are inserted with explicit timestamps so every window is exact
(tests.trainer.policy_world). Which retrains fall due: test_retrain_triggers.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core.db import Database
from core.errors import TailorError
from core.ids import utcnow
from core.models import TenantPolicy
from tests.trainer.policy_world import LEVEL_AT, NOW, RECENT_AT, T0, Env, promoted
from trainer import policy
from trainer.gates import GateConfig


def refused(call, param: str) -> TailorError:  # type: ignore[no-untyped-def]
    with pytest.raises(TailorError) as err:
        call()
    assert err.value.status == 400, err.value
    assert err.value.param == param, (err.value.param, err.value.message)
    return err.value


def policy_rows(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(TenantPolicy)) or 0)


# --- get_policy / set_policy ---------------------------------------------------------


def test_get_policy_defaults_without_a_row(env: Env) -> None:
    info = policy.get_policy(env.db, env.acme)
    assert info.tenant_id == env.acme
    assert (info.retrain, info.retrain_min_feedback, info.retrain_interval_hours) == ("on_demand", 50, 24.0)
    assert (info.auto_promote, info.canary_fraction, info.last_triggered_at) == (False, 0.0, None)
    assert info.gates == GateConfig().to_dict()
    assert policy_rows(env.db) == 0  # reading creates nothing


def test_set_policy_updates_only_the_given_fields_and_persists(env: Env) -> None:
    info = policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 5})
    assert (info.retrain, info.retrain_min_feedback, info.retrain_interval_hours) == ("feedback_count", 5, 24.0)
    assert info.gates == GateConfig().to_dict()

    info = policy.set_policy(
        env.db, env.acme, {"auto_promote": True, "canary_fraction": 0.25, "gates": {"primary_metric": "token_f1"}}
    )
    assert (info.retrain, info.retrain_min_feedback) == ("feedback_count", 5)  # kept
    assert (info.auto_promote, info.canary_fraction) == (True, 0.25)
    # Gates are normalised: omitted settings take their defaults.
    assert info.gates == {**GateConfig().to_dict(), "primary_metric": "token_f1"}
    assert policy.get_policy(env.db, env.acme) == info
    # Another tenant is untouched.
    assert policy.get_policy(env.db, env.beta).retrain == "on_demand"
    assert policy_rows(env.db) == 1


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"retrian": "off"}, "retrian"),
        ({"retrain": "weekly"}, "retrain"),
        ({"retrain": None}, "retrain"),
        ({"retrain_min_feedback": 0}, "retrain_min_feedback"),
        ({"retrain_min_feedback": "5"}, "retrain_min_feedback"),
        ({"retrain_min_feedback": 2.5}, "retrain_min_feedback"),
        ({"retrain_interval_hours": 0}, "retrain_interval_hours"),
        ({"retrain_interval_hours": -1.0}, "retrain_interval_hours"),
        ({"retrain_interval_hours": float("nan")}, "retrain_interval_hours"),
        ({"canary_fraction": 1}, "canary_fraction"),
        ({"canary_fraction": -0.1}, "canary_fraction"),
        ({"auto_promote": "yes"}, "auto_promote"),
        ({"auto_promote": 1}, "auto_promote"),
        ({"gates": {"bogus": 1}}, "gates"),
        ({"gates": []}, "gates"),
        ({"gates": {"primary_metric": "bleu"}}, "gates.primary_metric"),
        ({"gates": {"noise": {"exact_match": -1}}}, "gates.noise.exact_match"),
        ({"gates": {"min_examples": 0}}, "gates.min_examples"),
    ],
)
def test_set_policy_refuses_bad_values(env: Env, changes: dict, param: str) -> None:
    refused(lambda: policy.set_policy(env.db, env.acme, changes), param)
    assert policy_rows(env.db) == 0


def test_a_refused_update_stores_nothing(env: Env) -> None:
    before = policy.set_policy(env.db, env.acme, {"retrain": "schedule", "retrain_interval_hours": 6})
    # Valid fields next to one bad field: none of them is stored.
    refused(
        lambda: policy.set_policy(
            env.db, env.acme, {"retrain": "off", "auto_promote": True, "gates": {"primary_metric": "nope"}}
        ),
        "gates.primary_metric",
    )
    refused(lambda: policy.set_policy(env.db, env.acme, {"retrain": "drift", "canary_fraction": 2}), "canary_fraction")
    assert policy.get_policy(env.db, env.acme) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("retrain_min_feedback", True), ("retrain_interval_hours", True), ("canary_fraction", False)],
)
def test_set_policy_refuses_booleans_as_numbers(env: Env, field: str, value: object) -> None:
    refused(lambda: policy.set_policy(env.db, env.acme, {field: value}), field)
    assert policy_rows(env.db) == 0


def test_mark_triggered(env: Env) -> None:
    policy.mark_triggered(env.db, env.acme, now=T0)  # no row yet: nothing to mark, nothing created
    assert policy_rows(env.db) == 0
    policy.set_policy(env.db, env.acme, {"retrain": "schedule"})
    policy.mark_triggered(env.db, env.acme, now=T0)
    assert policy.get_policy(env.db, env.acme).last_triggered_at == T0
    before = utcnow()
    policy.mark_triggered(env.db, env.acme)
    assert policy.get_policy(env.db, env.acme).last_triggered_at >= before  # type: ignore[operator]
    assert policy.get_policy(env.db, env.beta).last_triggered_at is None


# --- drift ---------------------------------------------------------------------------


def test_drift_without_a_promoted_version(env: Env) -> None:
    status = policy.drift(env.db, env.acme, "ghost", now=NOW)
    assert (status.version, status.drifted, status.reason) == (None, False, "no promoted version")
    assert status.promoted_level is None and status.recent is None

    env.register(env.acme, "draft", activate=False)  # registered, never active
    assert policy.drift(env.db, env.acme, "draft", now=NOW).reason == "no promoted version"

    v = env.register(env.acme, "support")
    env.promoted_at(v.id, None)
    assert policy.drift(env.db, env.acme, "support", now=NOW).reason == "no promoted version"

    # Another tenant's adapter is no adapter of this one.
    w = env.register(env.beta, "theirs")
    env.promoted_at(w.id, T0)
    env.rate(env.beta, w.id, LEVEL_AT, good=25)
    assert policy.drift(env.db, env.acme, "theirs", now=NOW).reason == "no promoted version"


def test_registering_an_active_version_sets_promoted_at(env: Env) -> None:
    v = env.register(env.acme, "support")
    status = policy.drift(env.db, env.acme, "support")
    assert status.version == v.version == 1
    assert status.reason.startswith("level not established")


def test_drift_level_not_established(env: Env) -> None:
    v = promoted(env)
    env.rate(env.acme, v.id, LEVEL_AT, good=policy.MIN_JUDGED - 1)
    env.rate(env.acme, v.id, RECENT_AT, bad=30)
    # Feedback before the promotion, after the level window, on another version or from
    # another tenant does not make the level.
    env.rate(env.acme, v.id, T0 - timedelta(hours=1), good=5)
    env.rate(env.acme, "av-other", LEVEL_AT, good=5)
    env.rate(env.beta, v.id, LEVEL_AT, good=5)
    status = policy.drift(env.db, env.acme, "support", now=NOW)
    assert status.drifted is False
    assert status.version == v.version
    assert status.promoted_level is not None and status.promoted_level.judged == policy.MIN_JUDGED - 1
    assert status.reason == f"level not established yet ({policy.MIN_JUDGED - 1}/{policy.MIN_JUDGED} judged answers)"


def test_drift_recent_window_too_small(env: Env) -> None:
    v = promoted(env)
    env.rate(env.acme, v.id, LEVEL_AT, good=20)
    env.rate(env.acme, v.id, RECENT_AT, bad=19)
    env.rate(env.acme, v.id, NOW - timedelta(days=8), bad=10)  # before the recent window
    status = policy.drift(env.db, env.acme, "support", now=NOW)
    assert status.drifted is False
    assert status.recent is not None and status.recent.judged == 19
    assert status.reason == "too little recent feedback (19/20 judged answers)"


def test_drift_when_share_good_falls_beyond_tolerance(env: Env) -> None:
    v = promoted(env)
    env.rate(env.acme, v.id, LEVEL_AT, good=20)
    env.rate(env.acme, v.id, RECENT_AT, good=17, bad=3)  # 1.00 -> 0.85
    status = policy.drift(env.db, env.acme, "support", now=NOW)
    assert status.drifted is True
    assert status.promoted_level.share_good == 1.0  # type: ignore[union-attr]
    assert status.recent.share_good == pytest.approx(0.85)  # type: ignore[union-attr]
    assert status.reason == "share of good answers fell from 1.00 to 0.85"


def test_drift_when_the_correction_rate_rises(env: Env) -> None:
    v = promoted(env)
    env.rate(env.acme, v.id, LEVEL_AT, good=20, corrected=1)  # 0.05
    env.rate(env.acme, v.id, RECENT_AT, good=20, corrected=4)  # 0.20, share_good unchanged
    status = policy.drift(env.db, env.acme, "support", now=NOW)
    assert status.drifted is True
    assert status.recent.share_good == 1.0  # type: ignore[union-attr]
    assert status.reason == "correction rate rose from 0.05 to 0.20"


def test_no_drift_within_tolerance(env: Env) -> None:
    v = promoted(env)
    env.rate(env.acme, v.id, LEVEL_AT, good=20, corrected=1)
    env.rate(env.acme, v.id, RECENT_AT, good=19, bad=1, corrected=2)  # 0.95, 0.10
    status = policy.drift(env.db, env.acme, "support", now=NOW)
    assert status.drifted is False
    assert status.reason == "within tolerance of its promoted level"
    # A stricter tolerance calls the same numbers drift.
    assert policy.drift(env.db, env.acme, "support", now=NOW, tolerance=0.01).drifted is True


def test_drift_follows_the_active_version(env: Env) -> None:
    v1 = promoted(env)
    env.rate(env.acme, v1.id, LEVEL_AT, good=20)
    env.rate(env.acme, v1.id, RECENT_AT, bad=20)
    assert policy.drift(env.db, env.acme, "support", now=NOW).drifted is True
    v2 = env.register(env.acme, "support")  # new active version: its own level, none yet
    env.promoted_at(v2.id, NOW - timedelta(days=2))
    status = policy.drift(env.db, env.acme, "support", now=NOW)
    assert (status.version, status.drifted) == (v2.version, False)
    assert status.reason.startswith("level not established")
