"""A retraining policy's `reward_grader`: checked as a reinforcement job's grader, audited with
the other changes, and a triggered run then trains with the reinforcement method on the
adapter's logged prompts (trainer.policy.retrain_plan, trainer.datasets.build_from_log).

The world: tests.trainer.policy_world (fixtures: conftest.py).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from adapters.store import AdapterStore
from core.blobs import BlobStore
from core.config import Settings
from core.errors import TailorError
from core.ids import new_id, utcnow
from core.models import AuditEvent, Interaction, Job
from tests.trainer.policy_world import Env
from trainer import datasets, policy
from trainer.graders import Capabilities
from trainer.worker import Worker

GRADER = {"type": "string_check", "name": "polite", "input": "{{ sample.output_text }}", "reference": "please",
          "operation": "ilike"}  # fmt: skip
PYTHON = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}


def log_prompts(env: Env, tenant_id: str, model: str, prompts: list[object]) -> None:
    with env.db.session() as s:
        for i, messages in enumerate(prompts):
            s.add(
                Interaction(
                    id=new_id("chatcmpl"),
                    tenant_id=tenant_id,
                    endpoint="chat.completions",
                    model=model,
                    request={"messages": messages},
                    response_text="a",
                    status_code=200,
                    created_at=utcnow() - timedelta(minutes=10 - i),
                )
            )


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_the_reward_grader_is_checked_stored_audited_and_removable(env: Env) -> None:
    after = policy.set_policy(env.db, env.acme, {"reward_grader": GRADER}, actor="admin")
    assert after.reward_grader == GRADER
    assert policy.get_policy(env.db, env.acme).reward_grader == GRADER
    with env.db.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "policy.update")).one()
        assert event.before["reward_grader"] is None and event.after["reward_grader"] == GRADER  # type: ignore[index]
    assert policy.set_policy(env.db, env.acme, {"reward_grader": None}).reward_grader is None


@pytest.mark.parametrize(
    ("grader", "param", "code"),
    [
        ({**GRADER, "operation": "regex"}, "reward_grader.operation", "invalid_grader"),
        ({**GRADER, "input": "{{ env.HOME }}"}, "reward_grader.input", "invalid_grader"),
        ("string_check", "reward_grader", "invalid_grader"),
        (PYTHON, "reward_grader.type", "python_grader_disabled"),
    ],
)
def test_a_bad_reward_grader_is_a_400_and_nothing_changes(env: Env, grader: object, param: str, code: str) -> None:
    with pytest.raises(TailorError) as e:
        policy.set_policy(env.db, env.acme, {"reward_grader": grader, "auto_promote": True}, actor="admin")
    assert (e.value.status, e.value.param, e.value.code) == (400, param, code)
    assert policy.get_policy(env.db, env.acme).auto_promote is False
    # where the operator enabled Python graders, a Python reward grader is taken
    enabled = Capabilities(python=True)
    assert policy.set_policy(env.db, env.acme, {"reward_grader": PYTHON}, grader_capabilities=enabled).reward_grader


def test_logged_prompts_of_the_adapter_make_a_prompts_snapshot(env: Env) -> None:
    blobs = BlobStore(f"file://{env.tmp / 'blobs'}")
    prompts = [user("refund?"), user("refund?"), user("hours?"), [*user("x"), {"role": "assistant", "content": "y"}]]
    log_prompts(env, env.acme, "support", prompts)
    log_prompts(env, env.acme, "other", [user("not this adapter")])
    log_prompts(env, env.beta, "support", [user("another tenant's")])
    snapshot = datasets.build_from_log(env.db, blobs, env.acme, "support", min_heldout=0)
    asked = {r.messages[-1]["content"] for r in (*snapshot.train_prompts, *snapshot.heldout_prompts)}
    assert asked == {"refund?", "hours?"}  # each once; an assistant prefill is no prompt
    with pytest.raises(TailorError) as e:
        datasets.build_from_log(env.db, blobs, env.acme, "nothing-logged")
    assert e.value.code == "no_training_data"


def test_with_a_reward_grader_triggered_runs_train_reinforcement_on_logged_prompts(env: Env) -> None:
    blobs = BlobStore(f"file://{env.tmp / 'blobs'}")
    env.register(env.acme, "support")
    # no grader: feedback picks the method, as before
    assert policy.retrain_plan(env.db, blobs, env.acme, "support").method == "supervised"
    policy.set_policy(env.db, env.acme, {"reward_grader": GRADER})
    # a grader but nothing logged yet: the feedback methods still
    assert policy.retrain_plan(env.db, blobs, env.acme, "support").method == "supervised"
    log_prompts(env, env.acme, "support", [user(f"question {i}") for i in range(6)])
    plan = policy.retrain_plan(env.db, blobs, env.acme, "support")
    assert (plan.method, plan.config) == ("reinforcement", {"grader": GRADER})
    snapshot = datasets.load_snapshot(env.db, blobs, env.acme, plan.dataset_id or "")
    assert snapshot.train_prompts and snapshot.params["source"] == "log"

    settings = Settings(data_dir=env.tmp / "data", base_model_path=env.base_dir, database_url=env.url,
                        engine_urls=["http://127.0.0.1:9"], blob_store_url=f"file://{env.tmp / 'blobs'}")  # fmt: skip
    worker = Worker(settings, env.db, AdapterStore(settings.adapter_store_url or "", settings.cache_dir / "adapters"),
                    BlobStore(settings.blob_store_url or ""), worker_id="w-test")  # fmt: skip
    policy.set_policy(env.db, env.acme, {"retrain": "feedback_count", "retrain_min_feedback": 3})
    env.feedback(env.acme, 3)
    (job_id,) = worker.trigger_policies()
    with env.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.method, job.source) == ("reinforcement", "policy")
        assert (job.config, job.dataset_id) == ({"grader": GRADER}, plan.dataset_id)
