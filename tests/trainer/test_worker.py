"""trainer.worker: real (tiny) fine-tuning jobs from a queued row to a registered version.

One SFT file teaches SmolLM2 an odd fact; the worker trains on it, checkpoints, evaluates
against the base model on the held-out split, gates, registers and promotes, leaving events,
checkpoint rows, an Evaluation row and report blobs. A second identical job must lose to
the version it would replace and be rejected. Cancellation and failures leave no version.
Distillation and reinforcement jobs: test_worker_methods.py.

Evaluation runs on the session's vLLM evaluation engine (tests/conftest.py), named to the
worker as TAILOR_EVAL_ENGINE_URL. The world (model, fact, worker): tests.trainer.worker_world.
Needs models/SmolLM2-135M-Instruct (prepared by `make model`); skipped without it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters import promotion
from core.db import Database
from core.models import AuditEvent, Evaluation, TenantPolicy
from tests.conftest import LiveEngine
from tests.trainer.worker_world import (
    ANSWER,
    HYPER,
    NEEDS_MODEL,
    QUESTIONS,
    Env,
)
from trainer import files, job_records, jobs

pytestmark = NEEDS_MODEL


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, eval_engine: LiveEngine
) -> tuple[Env, jobs.JobInfo, jobs.JobInfo]:
    """Two identical jobs for `geo`, run one after the other (shared: each costs real training)."""
    env = Env(tmp_path_factory.mktemp("worker"), eval_engine)
    first, second = env.job(), env.job()
    assert env.worker.run_once() is True
    assert env.worker.run_once() is True
    assert env.worker.run_once() is False  # queue drained
    return (env, jobs.get_job(env.db, env.tenant, first.id), jobs.get_job(env.db, env.tenant, second.id))


def test_first_job_trains_registers_and_promotes(trained: tuple[Env, jobs.JobInfo, jobs.JobInfo]) -> None:
    env, job, _ = trained
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == "geo@v1"
    # nothing served `geo` before, so a version that passes the gates serves at once
    assert job.decision == "promoted"
    assert job.dataset_id and job.trained_tokens and job.finished_at
    # "auto" made concrete once the data was known
    assert job.hyperparameters["max_steps"] == 12 and job.hyperparameters["lora_rank"] == 8

    metrics = [e for e in env.events(job.id) if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(1, 13))  # type: ignore[index]
    losses = [e.data["train_loss"] for e in metrics]  # type: ignore[index]
    assert losses[-1] < 0.3 * losses[0], losses
    messages = [e.message for e in env.events(job.id)]
    assert any(m.startswith("Evaluating against the base model") for m in messages)
    assert messages[-1].startswith("The job has successfully completed: geo@v1")

    checkpoints, _ = job_records.list_checkpoints(env.db, env.tenant, job.id)
    # every ceil(12 / 3) steps, and the final adapter
    assert [c.step for c in checkpoints] == [12, 8, 4]
    for c in checkpoints:
        assert env.blobs.exists(f"{c.path}/adapter_model.safetensors"), c.path
        assert c.metrics["train_loss"] >= 0

    v1 = env.versions()[0]
    assert (v1.version, v1.state, v1.source) == (1, "active", "training")
    assert (v1.job_id, v1.dataset_id, v1.parent_version_id) == (job.id, job.dataset_id, None)
    assert v1.metrics and v1.metrics["steps"] == 12 and "candidate" in v1.metrics
    active = promotion.active_version(env.db, env.tenant, "geo")
    assert active is not None and active.id == job.result_version_id == v1.id

    evaluation = job_records.get_evaluation(env.db, env.tenant, job.id)
    assert evaluation.candidate_version_id == v1.id and evaluation.baseline_version_id is None
    assert evaluation.decision == "promoted" and evaluation.reasons[-1].startswith("promote")
    assert evaluation.candidate_metrics["exact_match"] > evaluation.baseline_metrics["exact_match"]
    assert evaluation.report_key == f"reports/{env.tenant}/{job.id}/report.json"
    report = json.loads(env.blobs.get_bytes(evaluation.report_key))
    assert report["job_id"] == job.id
    assert env.blobs.get_bytes(f"reports/{env.tenant}/{job.id}/loss.png").startswith(b"\x89PNG")
    assert not (env.settings.data_dir / "jobs" / job.id).exists()
    with env.db.session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.actor == f"job:{job.id}").order_by(AuditEvent.id)).all()
    # The job's own actions, each in the gateway's before/after shape: register, then promote.
    assert [(e.action, e.target) for e in events] == [("adapter.register", "geo"), ("adapter.promote", "geo")]
    promote = events[-1]
    assert promote.before is not None and promote.before["active_version"] is None
    assert promote.after is not None and promote.after["active_version"] == 1


def test_identical_retrain_is_rejected_against_the_serving_version(
    trained: tuple[Env, jobs.JobInfo, jobs.JobInfo],
) -> None:
    env, first, job = trained
    assert job.status == "succeeded", job.error
    # same data, same seed: the same adapter, so the primary metric cannot improve
    assert (job.fine_tuned_model, job.decision) == ("geo@v2", "rejected")
    v1, v2 = env.versions()
    assert v2.state == "rejected" and v2.parent_version_id == v1.id and v2.job_id == job.id
    assert v1.state == "active"  # still serving
    evaluation = job_records.get_evaluation(env.db, env.tenant, job.id)
    assert evaluation.baseline_version_id == v1.id and evaluation.decision == "rejected"
    assert any(e.level == "warn" and "rejected" in e.message for e in env.events(job.id))
    with env.db.session() as s:
        assert len(list(s.scalars(select(Evaluation)))) == 2


def test_tenant_policy_picks_promote_candidate_or_canary(
    tmp_path: Path, eval_engine: LiveEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.worker.evaluating as evaluating
    import trainer.worker.selecting as selecting
    from trainer.compute.evaluation import Plan
    from trainer.evaluate import Comparison, Metrics
    from trainer.gates import Decision

    # Evaluation and gates have their own tests; here they always pass (and cost nothing),
    # so what is under test is what the worker does with a pass under each policy.
    metrics = Metrics(n=2, exact_match=1.0, token_f1=1.0, perplexity=1.5, win_rate=None)
    monkeypatch.setattr(
        evaluating.evaluation, "evaluate", lambda *_a, **_k: (Comparison(metrics, metrics, []), Plan([], 1))
    )
    monkeypatch.setattr(selecting, "decide", lambda *_a: Decision(promote=True, reasons=["forced"]))
    env = Env(tmp_path, eval_engine)
    one_step = {**HYPER, "max_steps": 1}

    def run(policy: dict[str, object] | None, **job_args: object) -> jobs.JobInfo:
        if policy is not None:
            with env.db.session() as s:
                s.merge(TenantPolicy(tenant_id=env.tenant, **policy))
        job = env.job(**{"hyperparameters": one_step, **job_args})
        assert env.worker.run_once()
        done = jobs.get_job(env.db, env.tenant, job.id)
        assert done.status == "succeeded", done.error
        return done

    # nothing serves `geo` yet: even with auto-promotion off the first version serves
    assert run({"auto_promote": False}).decision == "promoted"
    # training continues from the adapter named as `model` (here the serving v1)
    second = run(None, model="geo")
    assert second.decision == "candidate"
    assert any(e.message == "Training starts from geo version 1" for e in env.events(second.id))
    assert run({"auto_promote": True, "canary_fraction": 0.25}, model="geo@v2").decision == "canary"
    assert run({"auto_promote": True, "canary_fraction": 0.0}).decision == "promoted"
    versions = env.versions()
    # promoting v4 ends v3's canary (it was measured against v1): v3 is a candidate again
    assert [v.state for v in versions] == ["retired", "candidate", "candidate", "active"]
    # lineage: trained from v1, from v2, and (fresh) meant to replace v1
    assert [v.parent_version_id for v in versions] == [None, versions[0].id, versions[1].id, versions[0].id]

    # DPO starts from what the name serves (v4) and trains on preference pairs
    prefs = [
        {
            "input": {"messages": [{"role": "user", "content": q}]},
            "preferred_output": [{"role": "assistant", "content": ANSWER}],
            "non_preferred_output": [{"role": "assistant", "content": "Paris."}],
        }
        for q in QUESTIONS
    ]
    pref_file = files.upload_file(
        env.db, env.blobs, env.tenant, "prefs.jsonl", "\n".join(json.dumps(p) for p in prefs).encode(), "fine-tune"
    )
    dpo = run(None, method="dpo", training_file=pref_file.id, hyperparameters={**one_step, "beta": 0.2})
    assert dpo.decision == "promoted" and dpo.fine_tuned_model == "geo@v5"
    assert "reward_margin" in next(e for e in env.events(dpo.id) if e.type == "metrics").data
    assert env.versions()[-1].parent_version_id == versions[3].id
    assert [c.step for c in job_records.list_checkpoints(env.db, env.tenant, dpo.id)[0]] == [1]


def test_cancel_while_running_stops_and_registers_nothing(
    tmp_path: Path, eval_engine: LiveEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path, eval_engine)
    job = env.job()
    real_add_event = job_records.add_event

    def cancel_at_step_2(db: Database, job_id: str, message: str, **kw: object) -> job_records.EventInfo:
        event = real_add_event(db, job_id, message, **kw)  # type: ignore[arg-type]
        if message.startswith("Step 2/"):
            jobs.cancel_job(db, env.tenant, job_id, actor="test")
        return event

    monkeypatch.setattr(job_records, "add_event", cancel_at_step_2)
    assert env.worker.run_once()
    done = jobs.get_job(env.db, env.tenant, job.id)
    assert done.status == "cancelled" and done.result_version_id is None
    assert env.versions() == []
    # The run sees the cancellation within a few steps (the worker checks every few seconds).
    stopped = [e.message for e in env.events(job.id) if "cancelled after" in e.message]
    assert stopped and int(re.search(r"cancelled after (\d+)", stopped[0]).group(1)) >= 2  # type: ignore[union-attr]
    assert not (env.settings.data_dir / "jobs" / job.id).exists()


def test_failures_fail_the_job_with_an_error(
    tmp_path: Path, eval_engine: LiveEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path, eval_engine)
    missing = env.job(training_file=None, dataset_id="ds-gone")
    assert env.worker.run_once()
    done = jobs.get_job(env.db, env.tenant, missing.id)
    assert done.status == "failed" and done.error is not None
    assert done.error["code"] == "dataset_not_found"
    assert env.events(missing.id)[-1].level == "error"

    import trainer.worker.evaluating as evaluating

    def broken_compare(*_args: object, **_kw: object) -> None:
        raise RuntimeError("judge exploded")

    monkeypatch.setattr(evaluating.evaluation, "evaluate", broken_compare)
    crashed = env.job(hyperparameters={**HYPER, "max_steps": 1})
    assert env.worker.run_once()
    done = jobs.get_job(env.db, env.tenant, crashed.id)
    assert done.status == "failed" and done.error is not None
    # The tenant reads Tailor's words; the exception's own text stays in the operator's log.
    assert done.error["code"] == "internal_error" and "judge exploded" not in done.error["message"]
    assert env.versions() == []  # evaluation comes before registration
    assert not (env.settings.data_dir / "jobs" / crashed.id).exists()


def test_quantization_needs_a_gpu_and_fails_the_job_before_training(tmp_path: Path, eval_engine: LiveEngine) -> None:
    env = Env(tmp_path, eval_engine)
    job = env.job(hyperparameters={**HYPER, "quantization": "4bit"})
    assert env.worker.run_once()
    done = jobs.get_job(env.db, env.tenant, job.id)
    assert done.status == "failed" and done.error is not None
    assert (done.error["code"], done.error["param"]) == ("qlora_needs_cuda", "hyperparameters.quantization")
    assert not any(e.type == "metrics" for e in env.events(job.id)) and env.versions() == []


def test_early_stopping_evaluates_on_held_back_rows_and_keeps_the_best_adapter(
    tmp_path: Path, eval_engine: LiveEngine
) -> None:
    """Enough rows for a validation slice: the run evaluates on rows held back from the training
    rows, reports each evaluation, and the version is the adapter of the best one."""
    env = Env(tmp_path, eval_engine)
    suffixes = ("", " Please answer briefly.", " I need it for a quiz.", " Thanks!")
    lines = [
        json.dumps({"messages": [{"role": "user", "content": q + x}, {"role": "assistant", "content": ANSWER}]})
        for q in QUESTIONS
        for x in suffixes
    ]
    data = files.upload_file(env.db, env.blobs, env.tenant, "more.jsonl", "\n".join(lines).encode(), "fine-tune")
    job = env.job(training_file=data.id, hyperparameters={**HYPER, "early_stopping": True})
    assert env.worker.run_once()
    done = jobs.get_job(env.db, env.tenant, job.id)
    assert done.status == "succeeded", done.error
    assert done.hyperparameters["early_stopping"] is True

    events = env.events(job.id)
    plan = next(e for e in events if e.message.startswith("Training up to"))
    held = int(re.search(r"(\d+) training examples held back", plan.message).group(1))  # type: ignore[union-attr]
    assert held >= 8
    validations = [e.data["validation"] for e in events if e.data and "validation" in e.data]  # type: ignore[operator]
    assert len(validations) >= 2 and all(v["metrics"]["loss"] >= 0 for v in validations)
    assert all("exact_match" in v["metrics"] for v in validations)  # short answers: exact match decides
    finished = next(e for e in events if e.message.startswith("Training finished"))
    assert finished.data is not None and finished.data["validation_examples"] == held
    best = finished.data["best_step"]
    assert best in [v["step"] for v in validations if v["improved"]]
    assert finished.data["stop_reason"] in ("budget", "no_improvement")
    # the registered adapter is the best evaluation's, and so is the last checkpoint row
    assert env.versions()[0].metrics["best_step"] == best  # type: ignore[index]
    assert best in [c.step for c in job_records.list_checkpoints(env.db, env.tenant, job.id)[0]]


def test_jobs_are_traced_stage_by_stage(tmp_path: Path, eval_engine: LiveEngine) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    env = Env(tmp_path, eval_engine)
    spans = InMemorySpanExporter()
    env.worker.tracing.add_exporter(spans, batch=False)
    ok = env.job(hyperparameters={**HYPER, "max_steps": 1})
    assert env.worker.run_once()
    done = jobs.get_job(env.db, env.tenant, ok.id)
    assert done.status == "succeeded"
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"fine_tuning supervised", "dataset", "train", "evaluate", "register", "apply"}
    root = finished["fine_tuning supervised"]
    assert root.attributes is not None and root.attributes["tailor.job.id"] == ok.id
    assert root.attributes["gen_ai.request.model"] == env.settings.base_model_name
    children = [s for s in finished.values() if s is not root]
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in children)
    assert finished["apply"].attributes == {"tailor.decision": done.decision, "tailor.version": 1}

    spans.clear()
    broken = env.job(training_file=None, dataset_id="ds-gone")
    assert env.worker.run_once()
    (failed,) = [s for s in spans.get_finished_spans() if s.name.startswith("fine_tuning")]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["tailor.job.id"] == broken.id
    assert [e.name for e in failed.events] == ["exception"]
