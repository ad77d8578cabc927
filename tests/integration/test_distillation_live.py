"""Teacher distillation on the real server, with a real OpenAI-compatible endpoint as teacher.

The teacher is Tailor itself, reached over HTTP with another tenant's key: the base model
given a context (a system prompt and few-shot turns) that makes it answer one fixed
sentence. The server's trainer worker asks it for the answers to a file of inputs, trains
`zorblax-lite` on them WITHOUT the context, evaluates agreement, and promotes it; the
adapter then answers like the teacher with the bare question, for a fraction of the tokens.

The teacher is on loopback over http, which the outbound policy refuses unless the operator
allows it: the server runs with TAILOR_OUTBOUND_ALLOW_HTTP=true and
TAILOR_OUTBOUND_ALLOW_HOSTS=127.0.0.1 (tests/integration/conftest.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import BASE_MODEL, TailorServer, make_tenant
from tests.openai_schema import validate
from tests.trainer.worker_world import ANSWER, DISTILL_QUESTIONS, ZORBLAX_CONTEXT

pytestmark = pytest.mark.engine

# The same context and inputs as the worker's distillation tests (there with a local teacher).
CONTEXT, INPUTS = ZORBLAX_CONTEXT, DISTILL_QUESTIONS


def test_teacher_distillation_through_an_openai_endpoint(tailor_server: TailorServer) -> None:
    student, teacher = make_tenant(tailor_server, "distill-co"), make_tenant(tailor_server, "teacher-co")
    c = tailor_server.sdk(student)
    lines = "\n".join(json.dumps({"messages": [{"role": "user", "content": q}]}) for q in INPUTS)
    inputs = c.files.create(file=("inputs.jsonl", lines.encode()), purpose="fine-tune")
    hyperparameters = {"learning_rate_multiplier": 5, "batch_size": 2, "max_steps": 12}

    def method(**teacher: str) -> dict[str, Any]:
        distillation = {**CONTEXT, "teacher": teacher, "max_tokens": 16, "hyperparameters": hyperparameters}
        return {"type": "distillation", "distillation": distillation}

    # The same teacher by another name of this host, or with a key read from the server's
    # environment, is refused: only the allow-listed host, with a key given as a key.
    local_name = f"{tailor_server.url.replace('127.0.0.1', 'localhost')}/v1"
    for refused, param in (
        (method(model=BASE_MODEL, base_url=local_name, api_key=teacher.key), "base_url"),
        (method(model=BASE_MODEL, base_url=f"{tailor_server.url}/v1", api_key_env="TAILOR_ADMIN_KEY"), "api_key_env"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            c.fine_tuning.jobs.create(model=BASE_MODEL, training_file=inputs.id, method=refused)  # type: ignore[arg-type]
        assert e.value.param == f"method.distillation.teacher.{param}"
    allowed = method(model=BASE_MODEL, base_url=f"{tailor_server.url}/v1", api_key=teacher.key)
    job = c.fine_tuning.jobs.create(model=BASE_MODEL, training_file=inputs.id, suffix="zorblax-lite", method=allowed)  # type: ignore[arg-type]
    deadline = time.monotonic() + 600
    while (job := c.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}:\n{tailor_server.log_tail()}"
        time.sleep(0.5)
    assert job.status == "succeeded", job.error
    assert (job.fine_tuned_model, job.metadata["tailor_decision"]) == ("zorblax-lite@v1", "promoted")

    auth = {"Authorization": f"Bearer {student.key}"}
    raw = httpx.get(f"{tailor_server.url}/v1/fine_tuning/jobs/{job.id}", headers=auth)
    body = raw.json()
    validate(body, "FineTuningJob")
    assert teacher.key not in raw.text
    # the key is dropped once the job ends; it was only ever stored sealed
    assert body["distillation"]["teacher"]["api_key"] is None
    for f in tailor_server.data_dir.glob("tailor.db*"):
        assert teacher.key.encode() not in f.read_bytes()

    results = body["distillation"]["results"]
    assert results["teacher"] == f"{BASE_MODEL} at {tailor_server.url}/v1"
    assert results["prompt_tokens_saved_fraction"] > 0.5
    assert results["baseline_agreement_exact"] == 0.0
    assert results["teacher_agreement_exact"] >= 0.5, results

    # The teacher really was called through the OpenAI API: once per input, on its tenant's bill.
    with tailor_server.admin() as admin:
        usage = admin.get("/admin/usage", params={"tenant": teacher.name, "group_by": "model"}).json()
    assert sum(r["requests"] for r in usage["data"]) == len(INPUTS)

    time.sleep(0.6)  # the test server's lookup cache TTL
    bare = [{"role": "user", "content": "Which city is the capital of France, please?"}]
    r = c.chat.completions.create(model="zorblax-lite", messages=bare, temperature=0, max_tokens=16)  # type: ignore[arg-type]
    assert r.choices[0].message.content == ANSWER
    assert r.usage is not None and r.usage.prompt_tokens < results["prompt_tokens_with_context"] / 2
