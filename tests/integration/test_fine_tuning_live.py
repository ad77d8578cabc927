"""The rest of OpenAI's fine-tuning API on the real server, with the official SDK: a job with
`metadata` and a (wandb) integration, paused while it trains, its checkpoint called as a
model, listed by metadata, resumed, and finished from the checkpoint; another tenant can do
none of it. Every raw body is checked against OpenAI's schema.

The server's own trainer worker trains SmolLM2 on the odd fact of tests/trainer/worker_world.py;
the pause is asked for once the first training step is reported, and lands a few steps later.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.integration.conftest import BASE_MODEL, TailorServer, TenantKeys, make_tenant
from tests.openai_schema import validate
from tests.trainer.worker_world import ANSWER, QUESTIONS

pytestmark = pytest.mark.engine

STEPS = 24
HYPERPARAMETERS = {"learning_rate_multiplier": 5, "batch_size": 2, "max_steps": STEPS}


def wait_for(what: str, server: TailorServer, ready: Callable[[], bool], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s:.0f} s:\n{server.log_tail()}"
        time.sleep(0.5)


def job_body(c: openai.OpenAI, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = c.fine_tuning.jobs.with_raw_response.retrieve(job_id).http_response.json()
    validate(body, "FineTuningJob")
    return body


def test_pause_resume_checkpoint_models_and_metadata(tailor_server: TailorServer, tenant_b: TenantKeys) -> None:
    tenant = make_tenant(tailor_server, "pause-co")
    c, other = tailor_server.sdk(tenant), tailor_server.sdk(tenant_b)
    lines = "\n".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]})
        for q in QUESTIONS
    )
    training = c.files.create(file=("fact.jsonl", lines.encode()), purpose="fine-tune")
    tag = uuid.uuid4().hex
    raw = c.fine_tuning.jobs.with_raw_response.create(
        model=BASE_MODEL,
        training_file=training.id,
        suffix="pausing",
        metadata={"run": tag, "team": "geo"},
        integrations=[{"type": "wandb", "wandb": {"project": "tailor-test"}}],
        method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},  # type: ignore[typeddict-item]
    )
    created = raw.http_response.json()
    validate(created, "FineTuningJob")
    job_id = created["id"]
    assert {k: v for k, v in created["metadata"].items() if not k.startswith("tailor_")} == {"run": tag, "team": "geo"}

    # Listed by its metadata (the SDK sends metadata[run]=...), and only for its tenant.
    listed = c.fine_tuning.jobs.with_raw_response.list(metadata={"run": tag}).http_response.json()
    validate(listed, "ListPaginatedFineTuningJobsResponse")
    assert [j["id"] for j in listed["data"]] == [job_id]
    assert [j.id for j in c.fine_tuning.jobs.list(metadata={"run": tag, "team": "other"})] == []
    assert [j.id for j in other.fine_tuning.jobs.list(metadata={"run": tag})] == []

    def trained_steps() -> list[int]:
        events = c.fine_tuning.jobs.list_events(job_id, limit=100).data
        return sorted(int((e.data or {})["step"]) for e in events if e.type == "metrics")

    wait_for("a first training step", tailor_server, lambda: bool(trained_steps()))
    for action in (other.fine_tuning.jobs.pause, other.fine_tuning.jobs.resume):
        with pytest.raises(openai.NotFoundError):
            action(job_id)
    with pytest.raises(openai.BadRequestError) as refused:
        c.fine_tuning.jobs.resume(job_id)
    assert refused.value.code == "job_not_paused"
    raw = c.fine_tuning.jobs.with_raw_response.pause(job_id)
    asked = raw.http_response.json()
    validate(asked, "FineTuningJob")
    assert asked["status"] == "running" and asked["metadata"]["tailor_pause_requested"] == "true"

    wait_for("the pause", tailor_server, lambda: job_body(c, job_id)["status"] == "paused")
    paused = job_body(c, job_id)
    step = int(paused["metadata"]["tailor_paused_at_step"])
    assert 1 <= step < STEPS and paused["finished_at"] is None and paused["fine_tuned_model"] is None
    assert trained_steps() == list(range(1, step + 1))
    with pytest.raises(openai.BadRequestError) as refused:
        c.fine_tuning.jobs.pause(job_id)
    assert refused.value.code == "job_not_running"

    # The pause's checkpoint is a model: listed, and answering.
    raw_checkpoints = c.fine_tuning.jobs.checkpoints.with_raw_response.list(job_id).http_response.json()
    validate(raw_checkpoints, "ListFineTuningJobCheckpointsResponse")
    newest = raw_checkpoints["data"][0]
    validate(newest, "FineTuningJobCheckpoint")
    checkpoint = newest["fine_tuned_model_checkpoint"]
    assert (newest["step_number"], checkpoint) == (step, f"pausing:{job_id}:ckpt-step-{step}")
    assert checkpoint in [m.id for m in c.models.list()]
    answer = c.chat.completions.with_raw_response.create(
        model=checkpoint, messages=[{"role": "user", "content": QUESTIONS[0]}], temperature=0, max_tokens=16
    ).http_response.json()
    validate(answer, "CreateChatCompletionResponse")
    assert answer["model"] == checkpoint and answer["choices"][0]["message"]["content"]
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=checkpoint, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert checkpoint not in [m.id for m in other.models.list()]

    raw = c.fine_tuning.jobs.with_raw_response.resume(job_id)
    resumed = raw.http_response.json()
    validate(resumed, "FineTuningJob")
    assert resumed["status"] == "queued"
    terminal = ("succeeded", "failed", "cancelled")
    wait_for("the job's end", tailor_server, lambda: job_body(c, job_id)["status"] in terminal)
    done = job_body(c, job_id)
    assert done["status"] == "succeeded", done["error"]
    # Every step once: the first run's up to the pause, then the rest from its checkpoint.
    assert trained_steps() == list(range(1, STEPS + 1))
    raw_events = c.fine_tuning.jobs.with_raw_response.list_events(job_id, limit=100).http_response.json()
    validate(raw_events, "ListFineTuningJobEventsResponse")
    messages = [e["message"] for e in raw_events["data"]]
    assert f"Resuming from the checkpoint of step {step} of {STEPS}: {STEPS - step} step(s) left" in messages
    (ignored,) = [e for e in raw_events["data"] if e["message"].startswith("Integrations ignored")]
    assert ignored["level"] == "warn"
    with pytest.raises(openai.BadRequestError) as refused:
        c.fine_tuning.jobs.resume(job_id)
    assert refused.value.code == "job_not_paused"

    time.sleep(0.6)  # the test server's lookup cache TTL
    learned = c.chat.completions.create(
        model=done["fine_tuned_model"],
        messages=[{"role": "user", "content": QUESTIONS[0]}],
        temperature=0,
        max_tokens=16,
    )
    assert learned.choices[0].message.content == ANSWER
    final = f"pausing:{job_id}:ckpt-step-{STEPS}"
    assert final in [cp.fine_tuned_model_checkpoint for cp in c.fine_tuning.jobs.checkpoints.list(job_id)]
