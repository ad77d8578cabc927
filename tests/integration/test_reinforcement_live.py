"""Reinforcement fine-tuning on the real server, through the official SDK: the job learns.

The task is loadtests.bench_rft's `codeword`: the question asks for the row's code word
first, which the base model's sampled answers say within six tokens about one time in eight
(its greedy answers more often). A small job (GRPO on the CPU: six steps of two prompts, eight
short answers each, at 40 x the base rate: 2e-3) must raise the grader's mean score on the unseen prompts of its
validation file (its own evaluation: base model vs adapter, greedy, on the engine), report
the reward per step in its events, and leave the reward curve in its report. Its answers are
sampled on the worker's evaluation engine ("auto" sampler), each step's adapter loaded there:
the engine's metrics name every step's adapter as having served requests.

Measured on the 2-core CPU with other runs beside it: 297 s for the test (278 s of it
training) when TRL's generate sampled (load about 6), 217 s with the engine sampling (load
about 4-5), plus the shared server's start.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from loadtests.bench_rft import FORMAT_TASKS, jsonl, reward_events, split_rows
from tests.conftest import LiveEngine
from tests.integration.conftest import BASE_MODEL, TailorServer, make_tenant
from tests.openai_schema import validate
from trainer.worker.sampling import rollout_name

pytestmark = pytest.mark.engine

TASK = FORMAT_TASKS["codeword"]
HYPERPARAMETERS = {
    "max_steps": 6,
    "batch_size": 2,
    "group_size": 8,
    "max_completion_length": 6,
    "learning_rate_multiplier": 40,
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def method(grader: dict[str, object]) -> dict[str, object]:
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": HYPERPARAMETERS}}


def test_a_reinforcement_job_raises_the_grader_score(tailor_server: TailorServer, eval_engine: LiveEngine) -> None:
    tenant = make_tenant(tailor_server, "rft-co")
    c = tailor_server.sdk(tenant)
    train, heldout = split_rows(TASK, 8)
    rows = c.files.create(file=("rft.jsonl", jsonl(train[:16])), purpose="fine-tune")
    unseen = c.files.create(file=("unseen.jsonl", jsonl(heldout)), purpose="fine-tune")

    # A grader may read the answer and the row, nothing of the server's.
    leaky = {**TASK.grader, "reference": "{{ env.TAILOR_ADMIN_KEY }}"}
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=BASE_MODEL, training_file=rows.id, method=method(leaky))  # type: ignore[arg-type]
    assert e.value.param == "method.reinforcement.grader.reference"

    job = c.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=rows.id,
        validation_file=unseen.id,
        suffix="code-word",
        seed=0,
        method=method(TASK.grader),  # type: ignore[arg-type]
    )
    deadline = time.monotonic() + 600
    while (job := c.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}:\n{tailor_server.log_tail()}"
        time.sleep(0.5)
    assert job.status == "succeeded", job.error

    auth = {"Authorization": f"Bearer {tenant.key}"}
    base = f"{tailor_server.url}/v1/fine_tuning/jobs/{job.id}"
    validate(httpx.get(base, headers=auth).json(), "FineTuningJob")
    events = c.fine_tuning.jobs.list_events(job.id, limit=100).data
    rewards, _ = reward_events(events)
    assert len(rewards) == HYPERPARAMETERS["max_steps"]
    assert all(0.0 <= r <= 1.0 for r in rewards)
    # The answers were sampled on the worker's engine ("auto"), through the adapter of every step.
    steps = [e.data for e in events if isinstance(e.data, dict) and "mean_reward" in e.data]
    assert [d["sampler"] for d in steps] == ["engine"] * HYPERPARAMETERS["max_steps"]
    stem = rollout_name(job.id)
    assert {f"{stem}-0-{step}" for step in range(HYPERPARAMETERS["max_steps"])} <= eval_engine.served_adapters()

    evaluation = httpx.get(f"{base}/evaluation", headers=auth).json()
    before = evaluation["baseline"]["grader_score"]
    after = evaluation["candidate"]["grader_score"]
    assert after > before, (before, after, rewards)

    report = json.loads(httpx.get(f"{base}/report.json", headers=auth).content)
    assert [p["mean_reward"] for p in report["training"]["rewards"]] == pytest.approx(rewards)
    assert report["training"]["sampler"] == "engine"
    assert httpx.get(f"{base}/report.png", headers=auth).content.startswith(PNG_MAGIC)
