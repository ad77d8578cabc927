"""A distillation job with a smaller student (`method.distillation.student`) through
`/v1/fine_tuning/jobs` on the real app: queued as a full fine-tune of the student, and every
bad student a 400 naming the field before anything is queued. The base model here is
tests/tiny_llama.py's config (2 layers): the spec is checked against the base's config only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import registry
from tests.apputil import error, make_app, serve_tenants
from tests.gateway.fine_tuning_world import BASE, Api
from tests.gateway.gateway_world import write_tiny_adapter
from tests.tiny_llama import TINY_CONFIG
from trainer import jobs

INPUT = {"messages": [{"role": "user", "content": "Where is my parcel?"}]}
STUDENT = "method.distillation.student"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    base = tmp_path / "tiny-llama"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(TINY_CONFIG))
    with serve_tenants(make_app(tmp_path / "data", base_model_path=base), Api) as running:
        yield running


def distillation(student: Any, **more: Any) -> dict[str, Any]:
    return {"type": "distillation", "distillation": {"student": student, **more}}


def test_a_student_job_is_queued_as_a_full_fine_tune_of_the_student(api: Api) -> None:
    inputs = api.upload("acme", INPUT)
    job = api.create(
        model=BASE,
        training_file=inputs,
        suffix="small",
        method=distillation({"layers": [1]}, hyperparameters={"n_epochs": 2}),
    )
    assert job["distillation"]["student"] == {"layers": [1]}
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
    stored = jobs.get_job(api.db, api.ids["acme"], job["id"])
    assert stored.hyperparameters["finetuning_type"] == "full"
    assert stored.config is not None and stored.config["student"] == {"layers": [1]}
    # The same with the base as a teacher that has a context to distill away.
    api.create(
        model=BASE,
        training_file=inputs,
        method=distillation(
            {"layers": "every-other"}, system="Answer in French.", hyperparameters={"finetuning_type": "full"}
        ),
    )


def test_bad_students_are_refused_before_a_job_is_queued(api: Api) -> None:
    inputs = api.upload("acme", INPUT)

    def post(method: dict[str, Any], **body: Any) -> httpx.Response:
        return api.client.post(
            "/v1/fine_tuning/jobs",
            json={"model": BASE, "training_file": inputs, "method": method, **body},
            headers=api.keys["acme"],
        )

    for layers in ("every-third", "first:3", [0, 2], [1, 0], "../../../../etc", [True], "0," * 3000):
        error(post(distillation({"layers": layers})), 400, f"{STUDENT}.layers")
    error(post(distillation({})), 400, f"{STUDENT}.layers")
    error(post(distillation({"layers": "first:1", "dir": "/tmp"})), 400, f"{STUDENT}.dir")
    error(post(distillation("first:1")), 400, STUDENT)
    lora = distillation({"layers": "first:1"}, hyperparameters={"finetuning_type": "lora"})
    error(post(lora), 400, "hyperparameters.finetuning_type")
    error(post(distillation({"layers": "first:1"}), model="someone-elses"), 404, "model")
    # The student is derived from the base model: a job training one of the tenant's own
    # models is refused (the teacher may still be that model).
    s, acme = api.app.state.services, api.ids["acme"]
    helper = write_tiny_adapter(s.settings.data_dir / "helper-src")
    registry.register_dir(
        s.db, s.store, s.limits, tenant_id=acme, name="helper", source_dir=helper, base_model_name=BASE, actor="t"
    )
    error(post(distillation({"layers": "first:1"}), model="helper"), 400, "model")
    api.create(model=BASE, training_file=inputs, method=distillation({"layers": [0]}, teacher={"model": "helper"}))
    assert len(api.get("/v1/fine_tuning/jobs")["data"]) == 1
