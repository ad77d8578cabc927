"""trainer.policy: per-tenant retraining policies, drift of a promoted version, due retrains.

Real SQLite in tmp_path, real tenants, adapter versions registered from a tiny valid LoRA;
feedback and interactions are inserted with explicit timestamps so every window is exact.
Worker.trigger_policies is checked for queueing a "policy" job (no training runs).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from adapters import registry
from adapters.registry import ValidationLimits, VersionInfo
from adapters.store import AdapterStore
from adapters.validation import BaseModelSpec
from core.blobs import BlobStore
from core.config import Settings
from core.db import Database
from core.errors import TailorError
from core.ids import new_id, utcnow
from core.models import AdapterVersion, Feedback, Interaction, Job, JobEvent, TenantPolicy
from gateway.tenants import create_tenant
from tests.adapters.test_validation import tiny_config, write_adapter
from tests.dbutil import migrated, sqlite_url
from trainer import policy
from trainer.gates import GateConfig
from trainer.worker import Worker

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)  # promotion time of the drift scenarios
NOW = T0 + timedelta(days=30)  # recent window: [NOW - 7 d, NOW)
LEVEL_AT = T0 + timedelta(days=1)  # inside the level window [T0, T0 + 7 d)
RECENT_AT = NOW - timedelta(days=1)  # inside the recent window


@dataclass
class Env:
    tmp: Path
    url: str
    db: Database
    store: AdapterStore
    limits: ValidationLimits
    base_dir: Path
    acme: str
    beta: str
    adapter_src: Path

    def register(self, tenant_id: str, name: str = "support", *, activate: bool = True) -> VersionInfo:
        return registry.register_dir(
            self.db,
            self.store,
            self.limits,
            tenant_id=tenant_id,
            name=name,
            source_dir=self.adapter_src,
            base_model_name="SmolLM2-135M-Instruct",
            activate=activate,
            actor="test",
        )

    def promoted_at(self, version_id: str, when: datetime | None) -> None:
        with self.db.session() as s:
            s.get(AdapterVersion, version_id).promoted_at = when  # type: ignore[union-attr]

    def rate(
        self,
        tenant_id: str,
        version_id: str | None,
        when: datetime,
        *,
        good: int = 0,
        bad: int = 0,
        corrected: int = 0,
        model: str = "support",
    ) -> list[str]:
        """`good` + `bad` rated interactions at `when`; the first `corrected` of them also
        get a correction (a separate, unrated feedback row a minute later)."""
        iids = []
        with self.db.session() as s:
            for i, rating in enumerate(["good"] * good + ["bad"] * bad):
                iid = new_id("chatcmpl")
                iids.append(iid)
                s.add(
                    Interaction(
                        id=iid,
                        tenant_id=tenant_id,
                        endpoint="chat.completions",
                        model=model,
                        adapter_version_id=version_id,
                        request={"messages": [{"role": "user", "content": f"q{i}"}]},
                        response_text="a",
                        status_code=200,
                        created_at=when,
                    )
                )
                s.add(self._feedback(tenant_id, iid, version_id, model, when, rating=rating))
                if i < corrected:
                    s.add(
                        self._feedback(
                            tenant_id, iid, version_id, model, when + timedelta(minutes=1), correction="better"
                        )
                    )
        return iids

    def feedback(self, tenant_id: str, n: int, *, model: str = "support", when: datetime | None = None) -> None:
        """`n` plain feedback rows naming `model` (what due_retrains counts)."""
        with self.db.session() as s:
            for _ in range(n):
                s.add(
                    self._feedback(tenant_id, None, None, model, when or utcnow() - timedelta(minutes=5), rating="good")
                )

    @staticmethod
    def _feedback(
        tenant_id: str,
        iid: str | None,
        version_id: str | None,
        model: str,
        when: datetime,
        *,
        rating: str | None = None,
        correction: str | None = None,
    ) -> Feedback:
        return Feedback(
            id=new_id("fb"),
            tenant_id=tenant_id,
            interaction_id=iid,
            adapter_version_id=version_id,
            model=model,
            rating=rating,
            correction=correction,
            messages=None if iid else [{"role": "user", "content": "q"}],
            created_at=when,
        )

    def job(
        self,
        tenant_id: str,
        adapter_name: str,
        status: str = "succeeded",
        *,
        when: datetime | None = None,
        source: str = "api",
    ) -> str:
        """A training job for `adapter_name` created at `when` (default: now)."""
        job_id = new_id("ftjob")
        with self.db.session() as s:
            s.add(
                Job(
                    id=job_id,
                    tenant_id=tenant_id,
                    status=status,
                    method="supervised",
                    model="SmolLM2-135M-Instruct",
                    adapter_name=adapter_name,
                    hyperparameters={},
                    source=source,
                    created_at=when or utcnow(),
                )
            )
        return job_id

    def set_status(self, job_id: str, status: str) -> None:
        with self.db.session() as s:
            s.get(Job, job_id).status = status  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def adapter_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_adapter(tmp_path_factory.mktemp("adapter") / "lora")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A migrated database with tenants acme and beta, copied for each test (fast)."""
    path = tmp_path_factory.mktemp("template") / "t.db"
    db = migrated(sqlite_url(path.parent))
    acme, beta = create_tenant(db, "acme").id, create_tenant(db, "beta").id
    db.dispose()  # the last connection checkpoints the WAL into the file
    assert not path.with_name("t.db-wal").exists()
    return path, acme, beta


@pytest.fixture
def env(tmp_path: Path, adapter_src: Path, template: tuple[Path, str, str]) -> Iterator[Env]:
    base_dir = tmp_path / "tiny-llama"
    base_dir.mkdir()
    (base_dir / "config.json").write_text(json.dumps(tiny_config()))
    path, acme, beta = template
    shutil.copyfile(path, tmp_path / "t.db")
    url = f"sqlite:///{tmp_path}/t.db"
    db = Database(url)
    limits = ValidationLimits(base=BaseModelSpec.from_config_dir(base_dir), max_rank=16, max_bytes=10_000_000)
    store = AdapterStore(str(tmp_path / "store"), tmp_path / "cache")
    yield Env(tmp_path, url, db, store, limits, base_dir, acme, beta, adapter_src)
    db.dispose()


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


def promoted(env: Env, tenant_id: str | None = None, name: str = "support") -> VersionInfo:
    v = env.register(tenant_id or env.acme, name)
    env.promoted_at(v.id, T0)
    return v


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


# --- due_retrains --------------------------------------------------------------------


def triggers(env: Env, now: datetime | None = None) -> list[tuple[str, str]]:
    return [(t.tenant_id, t.adapter_name) for t in policy.due_retrains(env.db, now=now)]


def test_feedback_count_threshold(env: Env) -> None:
    env.register(env.acme, "support")
    policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 5})
    env.feedback(env.acme, 4)
    assert triggers(env) == []
    env.feedback(env.acme, 1)
    (trigger,) = policy.due_retrains(env.db)
    assert (trigger.tenant_id, trigger.adapter_name) == (env.acme, "support")
    assert trigger.reason == "5 new feedback items (threshold 5)"

    # The tenant-wide last_triggered_at plays no part: the count runs per adapter name.
    policy.mark_triggered(env.db, env.acme)
    assert triggers(env) == [(env.acme, "support")]

    # Only feedback since the name's last training job counts, and no cooldown applies.
    env.job(env.acme, "support", "succeeded")
    assert triggers(env) == []
    env.feedback(env.acme, 4, when=utcnow() + timedelta(seconds=1))
    assert triggers(env) == []
    env.feedback(env.acme, 1, when=utcnow() + timedelta(seconds=1))
    (trigger,) = policy.due_retrains(env.db)
    assert trigger.reason == "5 new feedback items (threshold 5)"


@pytest.mark.parametrize("source", ["policy", "feedback", "api"])
@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_any_finished_job_restarts_the_count(env: Env, source: str, status: str) -> None:
    env.register(env.acme, "support")
    policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 3})
    env.feedback(env.acme, 3, when=utcnow() - timedelta(hours=2))
    env.job(env.acme, "support", status, when=utcnow() - timedelta(hours=1), source=source)
    assert triggers(env) == []  # the 3 items predate the job
    env.feedback(env.acme, 2, when=utcnow() - timedelta(minutes=30))
    assert triggers(env) == []
    env.feedback(env.acme, 1, when=utcnow() - timedelta(minutes=10))
    assert triggers(env) == [(env.acme, "support")]  # eligible again: 3 items since the job


def test_the_newest_job_is_the_one_that_counts(env: Env) -> None:
    env.register(env.acme, "support")
    policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 3})
    now = utcnow()
    env.job(env.acme, "support", "succeeded", when=now - timedelta(hours=3))
    env.feedback(env.acme, 3, when=now - timedelta(hours=2))
    assert triggers(env, now) == [(env.acme, "support")]
    # Inserted later but created earlier: the newest creation time is still 3 h ago.
    env.job(env.acme, "support", "failed", when=now - timedelta(hours=5))
    assert triggers(env, now) == [(env.acme, "support")]
    env.job(env.acme, "support", "failed", when=now - timedelta(hours=1))
    assert triggers(env, now) == []
    # Another tenant's job on the same name resets nothing for acme.
    env.feedback(env.acme, 3, when=now - timedelta(minutes=30))
    env.job(env.beta, "support", "succeeded", when=now - timedelta(minutes=10))
    assert triggers(env, now) == [(env.acme, "support")]


def test_schedule(env: Env) -> None:
    env.register(env.acme, "support")
    policy.set_policy(env.db, env.acme, {"retrain": "schedule", "retrain_interval_hours": 24})
    now = utcnow()
    env.feedback(env.acme, 1, when=now - timedelta(hours=30))
    (trigger,) = policy.due_retrains(env.db, now=now)  # never trained: due
    assert (trigger.adapter_name, trigger.reason) == ("support", "scheduled every 24 h")

    job = env.job(env.acme, "support", "succeeded", when=now - timedelta(hours=1))
    env.feedback(env.acme, 1, when=now - timedelta(minutes=30))
    assert triggers(env, now) == []  # trained one hour ago: cooling down
    assert triggers(env, now + timedelta(hours=22)) == []
    assert triggers(env, now + timedelta(hours=23)) == [(env.acme, "support")]  # 24 h after the job

    # The tenant-wide last_triggered_at does not matter, only the name's last job.
    policy.mark_triggered(env.db, env.acme, now=now + timedelta(hours=22))
    assert triggers(env, now + timedelta(hours=23)) == [(env.acme, "support")]

    # Due by the clock but nothing new to learn from since the job: not due.
    with env.db.session() as s:
        s.get(Job, job).created_at = now - timedelta(minutes=10)  # type: ignore[union-attr]
    assert triggers(env, now + timedelta(days=30)) == []
    env.feedback(env.acme, 1, when=now - timedelta(minutes=5))
    assert triggers(env, now + timedelta(days=30)) == [(env.acme, "support")]


def test_drift_mode_triggers_only_when_drifted(env: Env) -> None:
    v = promoted(env)
    policy.set_policy(env.db, env.acme, {"retrain": "drift"})
    env.rate(env.acme, v.id, LEVEL_AT, good=20)
    env.rate(env.acme, v.id, RECENT_AT, good=19, bad=1)
    assert triggers(env, NOW) == []
    env.rate(env.acme, v.id, RECENT_AT, bad=5)  # 19/25 = 0.76
    (trigger,) = policy.due_retrains(env.db, now=NOW)
    assert (trigger.adapter_name, trigger.reason) == ("support", "drift: share of good answers fell from 1.00 to 0.76")


def test_drift_mode_waits_the_interval_after_the_last_job(env: Env) -> None:
    v = promoted(env)
    policy.set_policy(env.db, env.acme, {"retrain": "drift", "retrain_interval_hours": 48})
    env.rate(env.acme, v.id, LEVEL_AT, good=20)
    env.rate(env.acme, v.id, RECENT_AT, good=10, bad=10)
    assert triggers(env, NOW) == [(env.acme, "support")]

    # A retrain whose candidate was rejected leaves the version drifted: not retrained
    # again until retrain_interval_hours after that job, however drifted it stays.
    job = env.job(env.acme, "support", "succeeded", when=NOW - timedelta(hours=1), source="policy")
    assert policy.drift(env.db, env.acme, "support", now=NOW).drifted is True
    assert triggers(env, NOW) == []
    assert triggers(env, NOW + timedelta(hours=46)) == []
    (trigger,) = policy.due_retrains(env.db, now=NOW + timedelta(hours=47))
    assert trigger.reason.startswith("drift: share of good answers fell")

    # A job still in flight is never doubled, cooldown over or not.
    env.set_status(job, "running")
    assert triggers(env, NOW + timedelta(days=5)) == []
    env.set_status(job, "failed")
    assert triggers(env, NOW + timedelta(days=5)) == [(env.acme, "support")]


@pytest.mark.parametrize("mode", ["off", "on_demand"])
def test_off_and_on_demand_never_trigger(env: Env, mode: str) -> None:
    env.register(env.acme, "support")
    policy.set_policy(env.db, env.acme, {"retrain": mode, "retrain_min_feedback": 1, "retrain_interval_hours": 0.01})
    env.feedback(env.acme, 10)
    assert triggers(env) == []
    assert triggers(env, utcnow() + timedelta(days=365)) == []


def test_no_policy_row_never_triggers(env: Env) -> None:
    env.register(env.acme, "support")
    env.feedback(env.acme, 100)
    assert triggers(env) == []


@pytest.mark.parametrize(
    ("status", "skipped"),
    [
        ("queued", True),
        ("running", True),
        ("validating_files", True),
        ("succeeded", False),
        ("failed", False),
        ("cancelled", False),
    ],
)
def test_busy_adapters_are_skipped(env: Env, status: str, skipped: bool) -> None:
    env.register(env.acme, "support")
    env.register(env.acme, "sales")
    policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 2})
    now = utcnow()
    env.job(env.acme, "support", status, when=now - timedelta(hours=1))
    env.job(env.beta, "sales", "running", when=now - timedelta(hours=1))  # another tenant's: irrelevant
    env.feedback(env.acme, 2, model="support", when=now - timedelta(minutes=5))
    env.feedback(env.acme, 2, model="sales", when=now - timedelta(minutes=5))
    expected = [(env.acme, "sales")] if skipped else [(env.acme, "sales"), (env.acme, "support")]
    assert sorted(triggers(env, now)) == sorted(expected)
    # An older finished job next to the busy one changes nothing: any job in flight skips the name.
    env.job(env.acme, "support", "succeeded", when=now - timedelta(hours=2))
    assert sorted(triggers(env, now)) == sorted(expected)


def test_feedback_on_names_that_are_not_adapters_is_ignored(env: Env) -> None:
    env.register(env.beta, "support")  # beta's adapter, not acme's
    env.register(env.acme, "real")
    policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 1})
    env.feedback(env.acme, 5, model="SmolLM2-135M-Instruct")  # the base model
    env.feedback(env.acme, 5, model="ghost")
    env.feedback(env.acme, 5, model="support")
    assert triggers(env) == []
    env.feedback(env.acme, 1, model="real")
    assert triggers(env) == [(env.acme, "real")]


def test_several_tenants_are_judged_by_their_own_policy(env: Env) -> None:
    env.register(env.acme, "support")
    env.register(env.beta, "support")
    policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 3})
    policy.set_policy(env.db, env.beta, {"retrain": "feedback_count", "retrain_min_feedback": 10})
    env.feedback(env.acme, 3)
    env.feedback(env.beta, 5)
    assert triggers(env) == [(env.acme, "support")]


def test_retraining_one_adapter_does_not_reset_anothers_count(env: Env) -> None:
    env.register(env.acme, "support")
    env.register(env.acme, "sales")
    policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 5})
    now = utcnow()
    env.feedback(env.acme, 5, model="support", when=now - timedelta(hours=2))
    env.feedback(env.acme, 3, model="sales", when=now - timedelta(hours=2))
    assert triggers(env, now) == [(env.acme, "support")]
    # What the worker does for "support": a job, and the tenant's last_triggered_at.
    job = env.job(env.acme, "support", "queued", when=now - timedelta(hours=1), source="policy")
    policy.mark_triggered(env.db, env.acme, now=now - timedelta(hours=1))
    env.set_status(job, "succeeded")
    env.feedback(env.acme, 2, model="sales", when=now - timedelta(minutes=5))
    # "sales" has now had 5 items, 3 of them from before the "support" job: all count.
    (trigger,) = policy.due_retrains(env.db, now=now)
    assert (trigger.adapter_name, trigger.reason) == ("sales", "5 new feedback items (threshold 5)")
    # And "support", with nothing new since its job, stays put.
    env.job(env.acme, "sales", "succeeded", when=now - timedelta(minutes=1))
    assert triggers(env, now) == []


# --- Worker.trigger_policies ---------------------------------------------------------


def test_worker_queues_policy_jobs(env: Env) -> None:
    settings = Settings(
        data_dir=env.tmp / "data",
        base_model_path=env.base_dir,
        database_url=env.url,
        engine_urls=["http://127.0.0.1:9"],
    )
    worker = Worker(
        settings,
        env.db,
        AdapterStore(settings.adapter_store_url or "", settings.cache_dir / "adapters"),
        BlobStore(settings.blob_store_url or ""),
        worker_id="w-test",
    )
    assert worker.trigger_policies() == []

    env.register(env.acme, "support")
    policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 3})
    env.feedback(env.acme, 3)
    (job_id,) = worker.trigger_policies()

    with env.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.tenant_id, job.adapter_name, job.source, job.status, job.method) == (
            env.acme,
            "support",
            "policy",
            "queued",
            "supervised",
        )
        assert job.model == settings.base_model_name
        assert job.training_file is None  # built from feedback by the worker
        events = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert any("retraining policy" in m and "3 new feedback items" in m for m in events), events
    assert policy.get_policy(env.db, env.acme).last_triggered_at is not None

    # Queued job: not queued twice; finished with no new feedback: nothing either.
    assert worker.trigger_policies() == []
    env.set_status(job_id, "succeeded")
    assert worker.trigger_policies() == []
    with env.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1

    # Another adapter's count survives the "support" job: feedback given before it counts.
    env.register(env.acme, "sales")
    env.feedback(env.acme, 3, model="sales", when=utcnow() - timedelta(hours=1))
    (sales_job,) = worker.trigger_policies()
    with env.db.session() as s:
        assert s.get(Job, sales_job).adapter_name == "sales"  # type: ignore[union-attr]
    # New feedback after the "support" job makes "support" due again.
    env.feedback(env.acme, 3, model="support", when=utcnow() + timedelta(seconds=1))
    (again,) = worker.trigger_policies()
    with env.db.session() as s:
        assert s.get(Job, again).adapter_name == "support"  # type: ignore[union-attr]


def test_method_follows_what_the_feedback_is_made_of() -> None:
    from trainer.datasets import RatedRecord, Snapshot
    from trainer.policy import method_for

    prompt = ({"role": "user", "content": "q"},)
    both = (RatedRecord(prompt, "good", True), RatedRecord(prompt, "bad", False))

    def snap(signals: dict[str, int], ratings: tuple[RatedRecord, ...]) -> Snapshot:
        return Snapshot("ds", "t", "feedback", (), (), (), (), {"signals": signals}, ratings)

    assert method_for(snap({"ratings_only": 30, "corrections": 2, "preferences": 1}, both)) == "kto"
    assert method_for(snap({"ratings_only": 3, "corrections": 5, "preferences": 0}, both)) == "supervised"
    # Only good ratings: nothing to push away from; imitate them.
    assert method_for(snap({"ratings_only": 30, "corrections": 0, "preferences": 0}, both[:1])) == "supervised"
    assert method_for(snap({}, ())) == "supervised"  # snapshots older than signals
