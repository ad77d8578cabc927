"""trainer.worker: real (tiny) distillation and reinforcement jobs, from a queued row to a
gated version: prompt distillation from the session's evaluation engine as the teacher, a
remote teacher whose sealed key is used once, and a reinforcement job trained on its grader,
its answers sampled on the session's evaluation engine through each step's adapter.

The world (model, fact, worker): tests.trainer.worker_world. Needs
models/SmolLM2-135M-Instruct; skipped without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.models import Job
from tests.conftest import LiveEngine
from tests.trainer.worker_world import (
    ANSWER,
    DISTILL_QUESTIONS,
    HYPER,
    NEEDS_MODEL,
    QUESTIONS,
    ZORBLAX_CONTEXT,
    Env,
)
from trainer import datasets, distill, files, jobs
from trainer.distill import DistillSpec
from trainer.worker.sampling import rollout_name

pytestmark = NEEDS_MODEL


# --- distillation ------------------------------------------------------------------------


def upload_inputs(env: Env, questions: list[str]) -> str:
    lines = [json.dumps({"messages": [{"role": "user", "content": q}]}) for q in questions]
    return files.upload_file(env.db, env.blobs, env.tenant, "inputs.jsonl", "\n".join(lines).encode(), "fine-tune").id


def distill_job(env: Env, config: dict[str, object], **kw: object) -> jobs.JobInfo:
    spec = distill.parse_spec(config, env.settings)
    return env.job(
        method="distillation",
        adapter_name="zorblax",
        training_file=upload_inputs(env, DISTILL_QUESTIONS),
        config=spec.to_json(),
        **kw,
    )


def test_prompt_distillation_learns_to_answer_without_the_context(tmp_path: Path, eval_engine: LiveEngine) -> None:
    env = Env(tmp_path, eval_engine)
    job = distill_job(env, {**ZORBLAX_CONTEXT, "max_tokens": 16})
    assert env.worker.run_once()
    done = jobs.get_job(env.db, env.tenant, job.id)
    assert done.status == "succeeded", done.error
    assert (done.fine_tuned_model, done.decision) == ("zorblax@v1", "promoted")

    # The dataset is the teacher's answers (the base model WITH the context) to the inputs
    # WITHOUT it; the held-out reference is the teacher's answer too.
    snapshot = datasets.load_snapshot(env.db, env.blobs, env.tenant, done.dataset_id or "")
    assert snapshot.source == "distillation" and snapshot.heldout_sft
    spec = DistillSpec.from_json(ZORBLAX_CONTEXT)
    record = snapshot.train_sft[0]
    assert [m["role"] for m in record.messages] == ["user", "assistant"]
    teacher = eval_engine.client.answers(env.settings.base_model_name, [distill.with_context(spec, record.prompt)], 16)
    assert record.answer == teacher[0]

    metrics = (done.metrics or {})["distillation"]
    assert metrics["teacher"] == env.settings.base_model_name
    assert metrics["prompt_tokens_saved_per_request"] > 50
    assert metrics["prompt_tokens_saved_fraction"] > 0.5
    # Without the context the base model never answers like the teacher; the adapter does.
    assert metrics["baseline_agreement_exact"] == 0.0
    assert metrics["teacher_agreement_exact"] >= 0.5, metrics
    assert metrics == env.versions()[0].metrics["distillation"]  # type: ignore[index]
    messages = [e.message for e in env.events(job.id)]
    assert any(m.startswith("Asking the teacher (SmolLM2-135M-Instruct) to answer 12 inputs") for m in messages)
    assert any(m.startswith("Distilled: ") for m in messages)


def test_remote_teacher_distillation_uses_the_sealed_key_once(
    tmp_path: Path, eval_engine: LiveEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    import trainer.worker.distillation as distillation

    asked: list[httpx.Request] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}}]}
        return httpx.Response(200, json=reply)

    class MockedTeacher(distill.RemoteTeacher):
        def __init__(self, **kw: object) -> None:
            super().__init__(**kw, transport=httpx.MockTransport(endpoint))  # type: ignore[arg-type]

    monkeypatch.setattr(distillation, "RemoteTeacher", MockedTeacher)
    env = Env(tmp_path, eval_engine)
    teacher = {"model": "big-teacher", "base_url": "https://teacher.example/v1", "api_key": "sk-teacher-secret"}
    job = distill_job(env, {"teacher": teacher}, hyperparameters={**HYPER, "max_steps": 2})
    with env.db.session() as s:
        assert "sk-teacher-secret" not in json.dumps(s.get(Job, job.id).config)  # type: ignore[union-attr]
    assert env.worker.run_once()
    done = jobs.get_job(env.db, env.tenant, job.id)
    assert done.status == "succeeded", done.error
    assert len(asked) == len(DISTILL_QUESTIONS)
    assert {r.headers["authorization"] for r in asked} == {"Bearer sk-teacher-secret"}
    assert all(json.loads(r.content)["model"] == "big-teacher" for r in asked)
    # no context: the teacher sees each input as it is
    assert json.loads(asked[0].content)["messages"][0]["role"] == "user"
    assert (done.metrics or {})["distillation"]["teacher"] == "big-teacher at https://teacher.example/v1"
    # the finished job keeps no key, not even sealed
    assert (done.config or {})["teacher"]["api_key_sealed"] is None


# --- reinforcement ------------------------------------------------------------------------

RFT_GRADER = {
    "type": "string_check",
    "name": "names the city",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.city }}",
    "operation": "ilike",
}


def test_reinforcement_job_trains_on_its_grader_and_is_gated_on_its_score(
    tmp_path: Path, eval_engine: LiveEngine
) -> None:
    env = Env(tmp_path, eval_engine)
    lines = [json.dumps({"messages": [{"role": "user", "content": q}], "city": "Paris"}) for q in QUESTIONS]
    rows = files.upload_file(env.db, env.blobs, env.tenant, "rft.jsonl", "\n".join(lines).encode(), "fine-tune")
    hp = {"max_steps": 2, "batch_size": 2, "group_size": 2, "max_completion_length": 16}
    # A multi grader whose score_model asks the tenant's base model on the worker's engine, from
    # the training process's reward and from the evaluation (trainer.worker.grading).
    judge = {"type": "score_model", "name": "judge", "model": env.settings.base_model_name,
             "input": [{"role": "user", "content": "Rate 0 to 1: is '{{ sample.output_text }}' about Paris?"}],
             "sampling_params": {"temperature": 0, "max_completions_tokens": 16}}  # fmt: skip
    grader = {"type": "multi", "name": "city and judge", "graders": {"city": RFT_GRADER, "judge": judge},
              "calculate_output": "0.5 * city + 0.5 * judge"}  # fmt: skip
    job = env.job(method="reinforcement", adapter_name="rft", training_file=rows.id, hyperparameters=hp,
                  config={"grader": grader})  # fmt: skip
    assert env.worker.run_once()
    done = jobs.get_job(env.db, env.tenant, job.id)
    assert done.status == "succeeded", done.error
    assert any(e.message.startswith("Grader models on the worker's engine") for e in env.events(job.id))
    steps = [e.data for e in env.events(job.id) if e.data and "step" in e.data and "mean_reward" in e.data]
    assert [d["step"] for d in steps] == [1, 2]
    # "auto" sampled the answers on the engine, through the adapter of each step (0 and 1)
    assert all(d["sampler"] == "engine" for d in steps)
    stem = rollout_name(job.id)
    assert {f"{stem}-0-0", f"{stem}-0-1"} <= eval_engine.served_adapters()
    assert not [m for m in eval_engine.client.http.get("/v1/models").json()["data"] if m["id"].startswith(stem)]
    assert all(0 <= d["mean_reward"] <= 1 and d["reward_std"] >= 0 and "kl" in d for d in steps)
    metrics = done.metrics or {}
    candidate, baseline = metrics["candidate"], metrics["baseline"]
    assert 0 <= candidate["grader_score"] <= 1 and 0 <= baseline["grader_score"] <= 1
    assert any("grader_score" in r and "[primary]" in r for r in metrics["reasons"])
    snapshot = datasets.load_snapshot(env.db, env.blobs, env.tenant, done.dataset_id or "")
    assert snapshot.heldout_prompts and snapshot.train_prompts[0].fields() == {"city": "Paris"}
