"""trainer.policy.due_retrains: which adapters a tenant's policy retrains now, and
Worker.trigger_policies queueing a "policy" job for each (no training runs).

The world (tenants, adapter versions, feedback at exact times): tests.trainer.policy_world.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from adapters import registry
from adapters.store import AdapterStore
from core.blobs import BlobStore
from core.config import Settings
from core.ids import utcnow
from core.models import Job, JobEvent
from tests.trainer.policy_world import LEVEL_AT, NOW, RECENT_AT, Env, promoted
from trainer import policy
from trainer.worker import Worker

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


def _worker(env: Env, settings: Settings) -> Worker:
    return Worker(
        settings,
        env.db,
        AdapterStore(settings.adapter_store_url or "", settings.cache_dir / "adapters"),
        BlobStore(settings.blob_store_url or ""),
        worker_id="w-test",
    )


def test_worker_queues_policy_jobs(env: Env) -> None:
    settings = Settings(
        data_dir=env.tmp / "data",
        base_model_path=env.base_dir,
        database_url=env.url,
        engine_urls=["http://127.0.0.1:9"],
    )
    worker = _worker(env, settings)
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


def test_an_adapter_on_another_base_retrains_on_that_base(env: Env) -> None:
    bases = {"main": {"path": str(env.base_dir)}, "other": {"path": str(env.base_dir)}}
    settings = Settings(data_dir=env.tmp / "data", database_url=env.url, base_models=bases)  # type: ignore[arg-type]
    worker = _worker(env, settings)
    registry.register_dir(
        env.db,
        env.store,
        replace(env.limits, base_name="other"),
        tenant_id=env.acme,
        name="elsewhere",
        source_dir=env.adapter_src,
        base_model_name="other",
        actor="test",
    )
    policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 3})
    env.feedback(env.acme, 3, model="elsewhere")
    (job_id,) = worker.trigger_policies()
    with env.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.model, job.config) == ("other", {"base_model": "other"})
