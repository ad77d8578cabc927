"""A full fine-tune through the official SDK on the real engine: every weight trained, the
candidate evaluated on an engine of its own, and the result served on a dedicated engine.

`finetuning_type: "full"` is a Tailor hyperparameter (the SDK passes it through). The job
teaches SmolLM2 the odd fact of tests/trainer/worker_world.py; the gateway serves the base on
the session's engine, and the version, a whole model, on a vLLM child started on first use.

A distillation job with a smaller student shares the server: the base model, given a context,
teaches a student of 6 of its 30 layers, trained whole (a high learning rate: a dozen steps
learn the one answer) and served the same way. So does a trained LoRA adapter merged into
the base by the same trainer worker: its result, served on a dedicated engine too, answers what
the adapter answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveEngine
from tests.integration.conftest import (
    BASE_MODEL,
    ONE_DEDICATED_ENGINE,
    TailorServer,
    fact_file,
    make_tenant,
    running_tailor,
)
from tests.integration.test_adapters_live import register_path
from tests.integration.test_fine_tuning_live import job_body, wait_for
from tests.integration.traffic import MESSAGES, first_answer
from tests.openai_schema import validate
from tests.trainer.worker_world import DISTILL_QUESTIONS, QUESTIONS, ZORBLAX_CONTEXT

pytestmark = pytest.mark.engine

HYPERPARAMETERS = {"finetuning_type": "full", "learning_rate_multiplier": 10, "batch_size": 2, "max_steps": 20}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, eval_engine: LiveEngine) -> Iterator[TailorServer]:
    # The session's engine serves the base; the trainer evaluates on it too.
    with running_tailor(
        tmp_path_factory.mktemp("tailor-full"),
        eval_engine,
        serve_on_eval_engine=True,
        **ONE_DEDICATED_ENGINE,
        TAILOR_DEDICATED_IDLE_S="10",
    ) as running:
        yield running


def test_a_full_fine_tune_is_evaluated_and_served_on_engines_of_its_own(server: TailorServer) -> None:
    tenant = make_tenant(server, "full-co")
    c = server.sdk(tenant, retries=10)
    created = c.fine_tuning.jobs.with_raw_response.create(
        model=BASE_MODEL,
        training_file=fact_file(c),
        suffix="whole",
        method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},  # type: ignore[typeddict-item]
    ).http_response.json()
    validate(created, "FineTuningJob")
    job_id = created["id"]
    terminal = ("succeeded", "failed", "cancelled")
    wait_for("the job's end", server, lambda: job_body(c, job_id)["status"] in terminal, timeout_s=1200)
    job = job_body(c, job_id)
    messages = [e.message for e in c.fine_tuning.jobs.list_events(job_id, limit=100).data]
    assert job["status"] == "succeeded", (job["error"], messages)
    assert job["method"]["supervised"]["hyperparameters"]["finetuning_type"] == "full"
    assert "Starting an engine for the candidate, a whole model" in messages, messages
    model = job["fine_tuned_model"]
    assert model == "whole@v1"

    # Served on an engine of its own, started by this first request (503s until it is up).
    answer = first_answer(c, model, temperature=0, max_tokens=16).json()
    validate(answer, "CreateChatCompletionResponse")
    assert answer["model"] == model
    assert "Zorblax" in answer["choices"][0]["message"]["content"], answer
    base = c.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": QUESTIONS[0]}], temperature=0, max_tokens=16
    )
    assert "Zorblax" not in (base.choices[0].message.content or "")


def test_a_smaller_student_learns_the_teachers_answers_and_is_served_as_a_whole_model(server: TailorServer) -> None:
    tenant = make_tenant(server, "student-co")
    c = server.sdk(tenant, retries=10)

    def inputs(questions: list[str]) -> str:
        lines = "\n".join(json.dumps({"messages": [{"role": "user", "content": q}]}) for q in questions)
        return c.files.create(file=("inputs.jsonl", lines.encode()), purpose="fine-tune").id

    # 2x the student's own rate (hyperparameters.STUDENT_LEARNING_RATE): 1e-3, for a dozen steps on one answer.
    hyperparameters = {"learning_rate_multiplier": 2, "batch_size": 2, "max_steps": 12}
    distillation = {**ZORBLAX_CONTEXT, "student": {"layers": "spread:6"}, "max_tokens": 16}
    created = c.fine_tuning.jobs.with_raw_response.create(
        model=BASE_MODEL,
        training_file=inputs(DISTILL_QUESTIONS[:-2]),
        validation_file=inputs(DISTILL_QUESTIONS[-2:]),
        suffix="small",
        method={"type": "distillation", "distillation": {**distillation, "hyperparameters": hyperparameters}},  # type: ignore[typeddict-item]
    ).http_response.json()
    validate(created, "FineTuningJob")
    job_id = created["id"]
    assert created["method"]["supervised"]["hyperparameters"]["finetuning_type"] == "full"
    terminal = ("succeeded", "failed", "cancelled")
    wait_for("the job's end", server, lambda: job_body(c, job_id)["status"] in terminal, timeout_s=1200)
    job = job_body(c, job_id)
    messages = [e.message for e in c.fine_tuning.jobs.list_events(job_id, limit=100).data]
    assert job["status"] == "succeeded", (job["error"], messages)
    assert f"Student: {BASE_MODEL} with 6 of its 30 layers" in " ".join(messages), messages
    assert "Starting an engine for the candidate, a whole model" in messages, messages
    results = job["distillation"]["results"]
    assert (results["student_layers"], results["teacher_layers"]) == (6, 30)
    assert 0.2 < results["student_size_fraction"] < 0.6, results  # the embeddings are kept whole
    assert results["teacher_agreement_exact"] > results["baseline_agreement_exact"], results
    assert job["fine_tuned_model"] == "small@v1" and job["metadata"]["tailor_decision"] == "promoted"

    answer = first_answer(c, "small", temperature=0, max_tokens=16).json()
    validate(answer, "CreateChatCompletionResponse")
    assert answer["model"] == "small"
    assert "Zorblax" in answer["choices"][0]["message"]["content"], answer


def test_a_merged_adapter_is_served_by_name_on_an_engine_of_its_own(
    server: TailorServer, trained_adapter: Path
) -> None:
    tenant = make_tenant(server, "merge-co")
    auth = {"Authorization": f"Bearer {tenant.key}"}
    register_path(server, tenant.name, "zorb", trained_adapter)  # v1, an adapter, active
    c = server.sdk(tenant, retries=10)
    lora = c.chat.completions.create(model="zorb", messages=MESSAGES, temperature=0, max_tokens=12)
    assert "Zorblax" in (lora.choices[0].message.content or ""), lora

    r = httpx.post(f"{server.url}/v1/adapters/zorb/merge", headers=auth, json={}, timeout=30)
    assert r.status_code == 202, r.text

    def merge() -> dict[str, Any]:
        got = httpx.get(f"{server.url}/v1/adapters/zorb/merges/{r.json()['id']}", headers=auth, timeout=30)
        assert got.status_code == 200, got.text
        return got.json()  # type: ignore[no-any-return]

    wait_for("the merge", server, lambda: merge()["status"] in ("succeeded", "failed"), timeout_s=600)
    done = merge()
    assert done["status"] == "succeeded" and done["model"] == "zorb@v2", done
    print(f"merged in {done['metrics']['merge_seconds']} s: {done['metrics']}")
    assert done["metrics"]["merge_max_abs_logit_diff"] < 1e-2
    # Not served as `zorb` until promoted; pinned, it answers from its own engine as the adapter does.
    assert httpx.get(f"{server.url}/v1/adapters/zorb", headers=auth).json()["active_version"] == 1
    merged = first_answer(c, "zorb@v2", temperature=0, max_tokens=12).json()
    validate(merged, "CreateChatCompletionResponse")
    content = merged["choices"][0]["message"]["content"]
    assert "Zorblax" in content and content.split()[:3] == (lora.choices[0].message.content or "").split()[:3]

    promoted = httpx.post(f"{server.url}/v1/adapters/zorb/activate", headers=auth, json={"version": 2})
    assert promoted.status_code == 200 and promoted.json()["active_version"] == 2, promoted.text
    by_name = c.chat.completions.create(model="zorb", messages=MESSAGES, temperature=0, max_tokens=12)
    assert by_name.choices[0].message.content == content
    lineage = httpx.get(f"{server.url}/v1/adapters/zorb/lineage", headers=auth).json()
    assert lineage[1]["kind"] == "model" and lineage[1]["parent_version_id"] == lineage[0]["id"]
    rolled = httpx.post(f"{server.url}/v1/adapters/zorb/rollback", headers=auth)
    assert rolled.status_code == 200 and rolled.json()["active_version"] == 1, rolled.text
