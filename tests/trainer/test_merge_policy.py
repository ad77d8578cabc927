"""trainer.merge_policy: a tenant's `merge_above_share` merges the adapter that carries that
share of its chat traffic (the share, the trigger, the merge queued once, audited as the
policy's), and the policy's new fields checked and audited (no merge runs here).

The world (tenants acme and beta, adapter versions, interactions at exact times):
tests.trainer.policy_world.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from adapters.store import AdapterStore
from core.blobs import BlobStore
from core.config import Settings
from core.errors import TailorError
from core.ids import new_id, utcnow
from core.models import AdapterVersion, AuditEvent, Interaction, Job, JobEvent
from core.quotas import Quotas
from core.states import JobStatus
from tests.trainer.policy_world import NOW, Env
from trainer import merge_policy, policy
from trainer.merge import MergeRequest
from trainer.worker import Worker

BASE = "SmolLM2-135M-Instruct"
QUOTAS = Quotas(max_stored_bytes=10**9, max_adapter_versions=100, max_files=100, max_queued_jobs=10)


def traffic(
    env: Env,
    tenant_id: str,
    model: str,
    n: int,
    *,
    when: datetime = NOW - timedelta(hours=1),
    endpoint: str = "chat.completions",
    status: int = 200,
) -> None:
    """`n` requests to `model` at `when`."""
    with env.db.session() as s:
        for _ in range(n):
            s.add(
                Interaction(
                    id=new_id("chatcmpl"),
                    tenant_id=tenant_id,
                    endpoint=endpoint,
                    model=model,
                    request={"messages": [{"role": "user", "content": "q"}]},
                    response_text="a",
                    status_code=status,
                    created_at=when,
                )
            )


def shares(env: Env, tenant_id: str) -> dict[str, tuple[int, float]]:
    return {t.name: (t.requests, round(t.share, 3)) for t in merge_policy.traffic_shares(env.db, tenant_id, now=NOW)}


def queue(env: Env, now: datetime = NOW) -> list[str]:
    return merge_policy.queue_merges(env.db, base_model=BASE, quotas=QUOTAS, now=now)


def merges(env: Env, tenant_id: str) -> list[Job]:
    with env.db.session() as s:
        found = list(s.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.method == "merge")))
        s.expunge_all()
    return found


def set_merge_policy(env: Env, share: float = 0.5, min_requests: int = 10, **more: object) -> None:
    policy.set_policy(env.db, env.acme, {"merge_above_share": share, "merge_min_requests": min_requests, **more})


# --- the share -------------------------------------------------------------------------


def test_each_names_share_of_the_tenants_chat_traffic(env: Env) -> None:
    traffic(env, env.acme, "support", 5)
    traffic(env, env.acme, "support@v1", 1)  # pinned: the same name's traffic
    traffic(env, env.acme, "sales", 2, endpoint="responses")
    traffic(env, env.acme, BASE, 2)  # the base model counts in the whole
    traffic(env, env.beta, "support", 50)  # another tenant's
    assert shares(env, env.acme) == {"support": (6, 0.6), "sales": (2, 0.2), BASE: (2, 0.2)}
    assert shares(env, env.beta) == {"support": (50, 1.0)}
    assert [t.name for t in merge_policy.traffic_shares(env.db, env.acme, now=NOW)][0] == "support"


def test_only_the_window_and_answered_chat_requests_count(env: Env) -> None:
    window = merge_policy.TRAFFIC_WINDOW
    traffic(env, env.acme, "support", 3, when=NOW - window)  # the window's first instant
    traffic(env, env.acme, "support", 7, when=NOW - window - timedelta(seconds=1))  # before it
    traffic(env, env.acme, "support", 7, when=NOW)  # after it
    traffic(env, env.acme, "sales", 1)
    traffic(env, env.acme, "sales", 9, status=429)  # refused: no engine served them
    traffic(env, env.acme, "sales", 9, endpoint="embeddings")  # not chat
    assert shares(env, env.acme) == {"support": (3, 0.75), "sales": (1, 0.25)}
    assert merge_policy.traffic_shares(env.db, env.beta, now=NOW) == []


# --- the trigger -----------------------------------------------------------------------


def test_an_adapter_at_the_share_with_enough_requests_is_merged_once(env: Env) -> None:
    version = env.register(env.acme, "support")
    env.register(env.acme, "sales")
    set_merge_policy(env, share=0.6, min_requests=10)
    traffic(env, env.acme, "support", 12)
    traffic(env, env.acme, "sales", 8)  # 40%: below the share
    (merge_id,) = queue(env)
    (job,) = merges(env, env.acme)
    assert (job.id, job.adapter_name, job.status, job.model) == (merge_id, "support", "queued", BASE)
    assert MergeRequest.from_json(job.config or {}) == MergeRequest(1, version.id, activate=False)
    with env.db.session() as s:
        events = s.scalars(select(JobEvent.message).where(JobEvent.job_id == merge_id)).all()
        audited = s.scalars(select(AuditEvent).where(AuditEvent.action == "adapter.merge")).one()
        assert (audited.actor, audited.tenant_id, audited.target) == ("policy", env.acme, "support")
        assert audited.after == {"version": 1, "version_id": version.id, "activate": False, "id": merge_id}
    assert any("merge policy: 60% of the tenant's chat requests in the last 24 h (12)" in m for m in events)
    # queued, then running, then done: never a second merge of the same version
    for status in ("queued", "running", "succeeded", "cancelled"):
        env.set_status(merge_id, status)
        assert queue(env) == [], status
    assert len(merges(env, env.acme)) == 1


def test_auto_promote_activates_the_merged_version(env: Env) -> None:
    env.register(env.acme, "support")
    set_merge_policy(env, share=1, min_requests=1, auto_promote=True)
    traffic(env, env.acme, "support", 1)
    queue(env)
    (job,) = merges(env, env.acme)
    assert MergeRequest.from_json(job.config or {}).activate is True


def test_a_share_below_the_threshold_or_too_few_requests_merge_nothing(env: Env) -> None:
    env.register(env.acme, "support")
    set_merge_policy(env, share=0.5, min_requests=10)
    traffic(env, env.acme, "support", 9)  # all the traffic, but a handful of requests
    assert queue(env) == []
    traffic(env, env.acme, BASE, 11)  # 10 of 21: below half
    traffic(env, env.acme, "support", 1)
    assert merge_policy.due_merges(env.db, now=NOW) == []
    traffic(env, env.acme, "support", 1)  # 11 of 22: exactly the share
    (trigger,) = merge_policy.due_merges(env.db, now=NOW)
    assert (trigger.tenant_id, trigger.adapter_name, trigger.version) == (env.acme, "support", 1)


def test_no_policy_or_a_null_share_merges_nothing(env: Env) -> None:
    env.register(env.acme, "support")
    traffic(env, env.acme, "support", 2000)
    assert queue(env) == []  # no policy row: the defaults merge nothing
    set_merge_policy(env, share=0.5, min_requests=1)
    policy.set_policy(env.db, env.acme, {"merge_above_share": None})
    assert queue(env) == []


def test_only_an_active_adapter_of_the_tenants_is_merged(env: Env) -> None:
    set_merge_policy(env, share=0.1, min_requests=1)
    env.register(env.beta, "theirs")  # another tenant's name
    env.register(env.acme, "idle", activate=False)  # serves nothing
    whole = env.register(env.acme, "whole")
    with env.db.session() as s:
        s.get(AdapterVersion, whole.id).kind = "model"  # type: ignore[union-attr]
    for name in ("theirs", "idle", "whole", "ghost", BASE):
        traffic(env, env.acme, name, 5)
    assert queue(env) == []


def test_a_failed_merge_is_tried_again_only_after_a_while(env: Env) -> None:
    env.register(env.acme, "support")
    set_merge_policy(env, share=0.5, min_requests=1)
    traffic(env, env.acme, "support", 3)
    (first,) = queue(env)
    with env.db.session() as s:
        job = s.get(Job, first)
        assert job is not None
        job.status, job.finished_at = JobStatus.FAILED, NOW - timedelta(hours=1)
    assert queue(env) == []
    later = NOW + merge_policy.RETRY_FAILED_AFTER
    traffic(env, env.acme, "support", 3, when=later - timedelta(hours=1))
    (second,) = queue(env, later)
    assert second != first


def test_a_new_active_version_is_merged_though_the_last_one_was(env: Env) -> None:
    env.register(env.acme, "support")
    set_merge_policy(env, share=0.5, min_requests=1)
    traffic(env, env.acme, "support", 3)
    (first,) = queue(env)
    env.set_status(first, "succeeded")
    v2 = env.register(env.acme, "support")  # a retrained adapter now serves
    (second,) = queue(env)
    (job,) = [j for j in merges(env, env.acme) if j.id == second]
    assert MergeRequest.from_json(job.config or {}).version_id == v2.id


def test_a_full_queue_skips_the_merge_until_the_next_pass(env: Env) -> None:
    env.register(env.acme, "support")
    set_merge_policy(env, share=0.5, min_requests=1)
    traffic(env, env.acme, "support", 3)
    full = Quotas(max_stored_bytes=10**9, max_adapter_versions=100, max_files=100, max_queued_jobs=0)
    assert merge_policy.queue_merges(env.db, base_model=BASE, quotas=full, now=NOW) == []
    assert merges(env, env.acme) == []
    assert len(queue(env)) == 1


def test_a_merge_restarts_no_retraining_count(env: Env) -> None:
    env.register(env.acme, "support")
    set_merge_policy(env, share=0.5, min_requests=1, retrain="feedback_count", retrain_min_feedback=3)
    traffic(env, env.acme, "support", 3)
    env.feedback(env.acme, 3, when=NOW - timedelta(hours=2))
    assert len(queue(env)) == 1
    assert [t.adapter_name for t in policy.due_retrains(env.db, now=NOW)] == ["support"]


def test_the_worker_pass_queues_the_merge(env: Env) -> None:
    env.register(env.acme, "support")
    set_merge_policy(env, share=0.5, min_requests=1)
    traffic(env, env.acme, "support", 3, when=utcnow() - timedelta(hours=1))
    settings = Settings(data_dir=env.tmp / "data", base_model_path=env.base_dir, database_url=env.url,
                        engine_urls=["http://127.0.0.1:9"], blob_store_url=f"file://{env.tmp / 'blobs'}")  # fmt: skip
    worker = Worker(settings, env.db, AdapterStore(settings.adapter_store_url or "", settings.cache_dir / "adapters"),
                    BlobStore(settings.blob_store_url or ""), worker_id="w-test")  # fmt: skip
    (merge_id,) = worker.trigger_merges()
    assert [j.id for j in merges(env, env.acme)] == [merge_id]
    assert worker.trigger_merges() == []


# --- the policy's fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"merge_above_share": 0}, "merge_above_share"),
        ({"merge_above_share": 1.5}, "merge_above_share"),
        ({"merge_above_share": -0.1}, "merge_above_share"),
        ({"merge_above_share": float("nan")}, "merge_above_share"),
        ({"merge_above_share": True}, "merge_above_share"),
        ({"merge_above_share": "half"}, "merge_above_share"),
        ({"merge_min_requests": 0}, "merge_min_requests"),
        ({"merge_min_requests": 2.5}, "merge_min_requests"),
        ({"merge_min_requests": True}, "merge_min_requests"),
        ({"merge_min_requests": None}, "merge_min_requests"),
        ({"merge_min_requests": policy.MAX_MIN_REQUESTS + 1}, "merge_min_requests"),
    ],
)
def test_bad_merge_fields_are_400s_naming_the_field(env: Env, changes: dict[str, object], param: str) -> None:
    with pytest.raises(TailorError) as e:
        policy.set_policy(env.db, env.acme, {**changes, "auto_promote": True}, actor="admin")
    assert (e.value.status, e.value.param) == (400, param)
    assert policy.get_policy(env.db, env.acme).auto_promote is False  # nothing stored


def test_merge_fields_are_stored_audited_and_turned_off_with_null(env: Env) -> None:
    default = policy.get_policy(env.db, env.acme)
    assert (default.merge_above_share, default.merge_min_requests) == (None, policy.DEFAULT_MERGE_MIN_REQUESTS)
    after = policy.set_policy(env.db, env.acme, {"merge_above_share": 1, "merge_min_requests": 5}, actor="admin")
    assert (after.merge_above_share, after.merge_min_requests) == (1, 5)
    policy.set_policy(env.db, env.acme, {"merge_above_share": None}, actor="admin")
    with env.db.session() as s:
        first, second = s.scalars(select(AuditEvent).where(AuditEvent.action == "policy.update")).all()
        assert (first.before["merge_above_share"], first.after["merge_above_share"]) == (None, 1)  # type: ignore[index]
        assert (first.before["merge_min_requests"], first.after["merge_min_requests"]) == (1000, 5)  # type: ignore[index]
        assert second.after["merge_above_share"] is None  # type: ignore[index]
    assert policy.get_policy(env.db, env.acme).merge_min_requests == 5
