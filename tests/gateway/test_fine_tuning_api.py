"""`/v1/fine_tuning/jobs` and `/admin/tenants/{t}/train` on the real app (no engine, no worker).

Every OpenAI-route body is checked against OpenAI's schema. Training itself is the worker's
(tests/trainer/test_worker.py); here a job's later life (claimed, finished, evaluated) is
written with trainer.jobs directly, as a worker would, and read back through the API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.ids import new_id
from core.models import Feedback
from tests.apputil import ADMIN, TenantsApi, error, make_app, serve_tenants
from tests.openai_schema import validate
from trainer import job_queue, job_records, jobs

BASE = "SmolLM2-135M-Instruct"
CHAT = {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Zorblax."}]}
PREF = {
    "input": {"messages": [{"role": "user", "content": "Hi"}]},
    "preferred_output": [{"role": "assistant", "content": "Hello!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}


class Api(TenantsApi):
    def upload(self, tenant: str, *lines: object) -> str:
        data = "\n".join(json.dumps(x) for x in lines).encode() + b"\n"
        r = self.client.post(
            "/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"}, headers=self.keys[tenant]
        )
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def create(self, tenant: str = "acme", **body: object) -> dict:  # type: ignore[type-arg]
        r = self.client.post("/v1/fine_tuning/jobs", json=body, headers=self.keys[tenant])
        assert r.status_code == 200, r.text
        job = r.json()
        validate(job, "FineTuningJob")
        return job  # type: ignore[no-any-return]

    def get(self, path: str, tenant: str = "acme", schema: str | None = None, **params: object) -> dict:  # type: ignore[type-arg]
        r = self.client.get(path, params=params, headers=self.keys[tenant])
        assert r.status_code == 200, r.text
        if schema:
            validate(r.json(), schema)
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with serve_tenants(make_app(tmp_path), Api) as api:
        yield api


# --- creating ---------------------------------------------------------------------


def test_create_supervised_job(api: Api) -> None:
    file_id = api.upload("acme", CHAT, CHAT)
    job = api.create(
        model=BASE,
        training_file=file_id,
        suffix="geo",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "lora_rank": 4}}},
    )
    assert job["id"].startswith("ftjob-") and job["status"] == "queued"
    assert (job["model"], job["training_file"], job["seed"]) == (BASE, file_id, 7)
    assert job["fine_tuned_model"] is None and job["finished_at"] is None and job["error"] is None
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert job["method"]["type"] == "supervised"
    assert job["method"]["supervised"]["hyperparameters"]["lora_rank"] == 4
    assert job["metadata"]["tailor_adapter_name"] == "geo"
    assert job["organization_id"] == api.ids["acme"]
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}", schema="FineTuningJob") == job


def test_deprecated_hyperparameters_and_generated_name_and_seed(api: Api) -> None:
    file_id = api.upload("acme", CHAT, CHAT)
    job = api.create(model=BASE, training_file=file_id, hyperparameters={"batch_size": 2})
    assert job["hyperparameters"]["batch_size"] == 2
    assert job["method"] == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "batch_size": 2,
                "n_epochs": "auto",
                "learning_rate_multiplier": "auto",
                "lora_rank": "auto",
                "lora_alpha": "auto",
                "max_steps": "auto",
                "target_modules": "auto",
                "max_seq_length": "auto",
                "gradient_accumulation_steps": "auto",
                "packing": "auto",
                "early_stopping": "auto",
                "quantization": "auto",
            }
        },
    }
    assert job["metadata"]["tailor_adapter_name"] == "ft-" + job["id"].split("-", 1)[1][:8]
    assert isinstance(job["seed"], int)


def test_create_dpo_job(api: Api) -> None:
    file_id = api.upload("acme", PREF)
    # beta > 1: OpenAI's file writes `exclusiveMinimum: true` (OpenAPI 3.0's boolean form),
    # which tests.openai_schema reads as JSON Schema's "> 1"; any beta in (0, 2] is accepted.
    job = api.create(
        model=BASE, training_file=file_id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 1.5}}}
    )
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 1.5


RATED = {"messages": [{"role": "user", "content": "Route: jam"}, {"role": "assistant", "content": "QUEUE-HW"}]}


def test_create_kto_job(api: Api) -> None:
    file_id = api.upload("acme", {**RATED, "label": True}, {**RATED, "label": False})
    job = api.create(
        model=BASE,
        training_file=file_id,
        method={"type": "kto", "kto": {"hyperparameters": {"beta": 0.2, "target_modules": ["q_proj", "v_proj"]}}},
    )
    # OpenAI's schema has no "kto" method type: the job leaves `method` out and says it under `kto`.
    assert "method" not in job
    assert job["kto"]["hyperparameters"]["beta"] == 0.2
    assert job["kto"]["hyperparameters"]["target_modules"] == ["q_proj", "v_proj"]
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}", schema="FineTuningJob") == job
    # A KTO job needs rated answers; a supervised file is the wrong kind.
    chat = api.upload("acme", CHAT)
    r = api.client.post(
        "/v1/fine_tuning/jobs",
        json={"model": BASE, "training_file": chat, "method": {"type": "kto"}},
        headers=api.keys["acme"],
    )
    error(r, 400, "training_file")
    bad = api.client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": BASE,
            "training_file": file_id,
            "method": {"type": "kto", "kto": {"hyperparameters": {"target_modules": ["q_proj; rm -rf"]}}},
        },
        headers=api.keys["acme"],
    )
    error(bad, 400, "hyperparameters.target_modules")


def test_create_refusals(api: Api) -> None:
    chat, pref = api.upload("acme", CHAT), api.upload("acme", PREF)
    foreign = api.upload("beta", CHAT)

    def post(**body: object):  # type: ignore[no-untyped-def]
        return api.client.post(
            "/v1/fine_tuning/jobs", json={"model": BASE, "training_file": chat, **body}, headers=api.keys["acme"]
        )

    def method(**hp: object) -> dict[str, object]:
        return {"type": "supervised", "supervised": {"hyperparameters": hp}}

    error(post(hyperparameters={"n_epochs": 0}), 400, "hyperparameters.n_epochs")
    # over the engines' --max-lora-rank (16 by default)
    error(post(method=method(lora_rank=64)), 400, "hyperparameters.lora_rank")
    error(post(method=method(beta=0.1)), 400, "hyperparameters.beta")
    error(post(method={"type": "reinforcement"}), 400, "method.reinforcement.grader")
    error(post(training_file="file-nope"), 400, "training_file")
    error(post(training_file=foreign), 400, "training_file")
    error(post(training_file=pref), 400, "training_file")  # preference data for a supervised job
    error(post(validation_file=pref), 400, "validation_file")
    error(post(model="not-mine"), 404, "model")
    error(post(suffix=BASE), 400, "suffix")
    error(post(suffix="has spaces"), 400, "suffix")
    # wandb is accepted and ignored (tests/gateway/test_fine_tuning_control_api.py); nothing else is
    error(post(integrations=[{"type": "slack", "slack": {}}]), 400, "integrations.0.type")
    error(post(metadata={"tailor_source": "mine"}), 400, "metadata")
    error(api.client.post("/v1/fine_tuning/jobs", json={"model": BASE}, headers=api.keys["acme"]), 400, "training_file")
    error(api.client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": chat}), 401)
    assert api.get("/v1/fine_tuning/jobs")["data"] == []


INPUT = {"messages": [{"role": "user", "content": "Where is my parcel?"}]}
CONTEXT = {
    "system": "You route support tickets to queue codes. " * 20,
    "examples": [{"role": "user", "content": "Refund?"}, {"role": "assistant", "content": "BILL-7"}],
}


def test_create_distillation_jobs(api: Api, tmp_path: Path) -> None:
    inputs = api.upload("acme", INPUT)
    job = api.create(
        model=BASE,
        training_file=inputs,
        suffix="router-lite",
        method={"type": "distillation", "distillation": {**CONTEXT, "hyperparameters": {"n_epochs": 4}}},
    )
    # OpenAI's method types end at reinforcement: it reads as the supervised training it is.
    assert job["method"]["type"] == "supervised"
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 4
    assert job["metadata"]["tailor_method"] == "distillation"
    assert job["distillation"] == {
        "teacher": {"model": None, "base_url": None, "api_key": None, "api_key_env": None},
        "system_chars": len(CONTEXT["system"]),
        "examples": 2,
        "max_tokens": 256,
    }
    assert jobs.get_job(api.db, api.ids["acme"], job["id"]).method == "distillation"

    teacher = {"model": "gpt-big", "base_url": "https://teacher.example/v1", "api_key": "sk-teacher-secret"}
    remote = api.create(
        model=BASE, training_file=inputs, method={"type": "distillation", "distillation": {"teacher": teacher}}
    )
    assert remote["distillation"]["teacher"] == {
        "model": "gpt-big",
        "base_url": "https://teacher.example/v1",
        "api_key": "set",
        "api_key_env": None,
    }
    listed = api.client.get("/v1/fine_tuning/jobs", headers=api.keys["acme"]).text
    assert "sk-teacher-secret" not in listed
    # at rest: sealed, never in clear (the database and its write-ahead log, as bytes)
    stored = list(tmp_path.glob("tailor.db*"))
    assert stored and all(b"sk-teacher-secret" not in f.read_bytes() for f in stored)


def test_distillation_refusals(api: Api) -> None:
    inputs, chat = api.upload("acme", INPUT), api.upload("acme", CHAT)

    def post(distillation: object = CONTEXT, **body: object):  # type: ignore[no-untyped-def]
        method = {"type": "distillation", "distillation": distillation}
        return api.client.post(
            "/v1/fine_tuning/jobs",
            json={"model": BASE, "training_file": inputs, "method": method, **body},
            headers=api.keys["acme"],
        )

    error(post(distillation=None), 400, "method.distillation")
    error(post(distillation={}), 400, "method.distillation")
    error(post(distillation={"system": "x", "max_tokens": 99999}), 400, "method.distillation.max_tokens")
    error(post(distillation={"teacher": {"base_url": "https://t/v1"}}), 400, "method.distillation.teacher.model")
    error(post(distillation={**CONTEXT, "teacher": {"model": "not-mine"}}), 404, "model")
    error(post(training_file=chat), 400, "training_file")  # answers, not inputs to answer
    plain = {"model": BASE, "training_file": inputs}
    # inputs without answers cannot train a supervised job
    error(api.client.post("/v1/fine_tuning/jobs", json=plain, headers=api.keys["acme"]), 400, "training_file")
    assert api.get("/v1/fine_tuning/jobs")["data"] == []


RFT_ROW = {"messages": [{"role": "user", "content": "Capital of France?"}], "answer": "Paris"}
GRADER = {
    "type": "string_check",
    "name": "right city",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.answer }}",
    "operation": "ilike",
}


def reinforcement(grader: object = GRADER, **hp: object) -> dict[str, object]:
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hp}}


def test_create_reinforcement_job(api: Api) -> None:
    rows = api.upload("acme", RFT_ROW)
    hp = {"n_epochs": 2, "compute_multiplier": 2, "eval_interval": 5, "reasoning_effort": "low", "group_size": 6}
    job = api.create(model=BASE, training_file=rows, validation_file=rows, method=reinforcement(**hp))
    method = job["method"]
    assert method["type"] == "reinforcement" and "tailor_method" not in job["metadata"]
    assert method["reinforcement"]["grader"] == GRADER
    assert {k: method["reinforcement"]["hyperparameters"][k] for k in hp} == hp
    assert method["reinforcement"]["hyperparameters"]["beta"] == "auto"
    stored = jobs.get_job(api.db, api.ids["acme"], job["id"])
    assert (stored.method, stored.config) == ("reinforcement", {"grader": GRADER})
    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events", schema="ListFineTuningJobEventsResponse")["data"]
    (warning,) = [e for e in events if e["level"] == "warn"]
    assert warning["data"] == {"ignored_hyperparameters": ["eval_interval", "reasoning_effort"]}
    # left out, reasoning_effort reads as OpenAI's own default, never "auto" (not in its enum)
    plain = api.create(model=BASE, training_file=rows, method=reinforcement())
    assert plain["method"]["reinforcement"]["hyperparameters"]["reasoning_effort"] == "default"
    # another tenant sees neither the job nor its grader
    r = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=api.keys["beta"])
    error(r, 404)


def test_reinforcement_refusals(api: Api) -> None:
    rows, chat = api.upload("acme", RFT_ROW), api.upload("acme", CHAT)
    foreign = api.upload("beta", RFT_ROW)

    def post(method: object, training_file: str = rows):  # type: ignore[no-untyped-def]
        body = {"model": BASE, "training_file": training_file, "method": method}
        return api.client.post("/v1/fine_tuning/jobs", json=body, headers=api.keys["acme"])

    grader = "method.reinforcement.grader"
    error(post({"type": "reinforcement"}), 400, grader)
    error(post(reinforcement(grader=None)), 400, grader)
    error(post(reinforcement(grader={**GRADER, "type": "python", "source": "import os"})), 400, f"{grader}.type")
    error(post(reinforcement(grader={**GRADER, "operation": "regex"})), 400, f"{grader}.operation")
    error(post(reinforcement(grader={**GRADER, "input": "{{ item.answer | upper }}"})), 400, f"{grader}.input")
    error(post(reinforcement(grader={**GRADER, "reference": "{{ env.HOME }}"})), 400, f"{grader}.reference")
    error(post(reinforcement(grader={**GRADER, "extra": 1})), 400, f"{grader}.extra")
    error(post(reinforcement(group_size=1)), 400, "hyperparameters.group_size")
    error(post(reinforcement(reasoning_effort="max")), 400, "hyperparameters.reasoning_effort")
    error(post(reinforcement(packing=True)), 400, "hyperparameters.packing")
    error(post(reinforcement(), training_file=chat), 400, "training_file")  # answers, not prompts to grade
    error(post(reinforcement(), training_file=foreign), 400, "training_file")
    assert api.get("/v1/fine_tuning/jobs")["data"] == []


# --- reading ----------------------------------------------------------------------


def test_list_pages_and_tenant_isolation(api: Api) -> None:
    file_id = api.upload("acme", CHAT, CHAT)
    made = [api.create(model=BASE, training_file=file_id)["id"] for _ in range(3)]
    page = api.get("/v1/fine_tuning/jobs", schema="ListPaginatedFineTuningJobsResponse", limit=2)
    assert [j["id"] for j in page["data"]] == made[::-1][:2] and page["has_more"] is True
    rest = api.get("/v1/fine_tuning/jobs", schema="ListPaginatedFineTuningJobsResponse", after=page["data"][-1]["id"])
    assert [j["id"] for j in rest["data"]] == made[:1] and rest["has_more"] is False

    other = api.get("/v1/fine_tuning/jobs", tenant="beta", schema="ListPaginatedFineTuningJobsResponse")
    assert other["data"] == []
    for path in ("", "/events", "/checkpoints", "/evaluation", "/report.png"):
        error(api.client.get(f"/v1/fine_tuning/jobs/{made[0]}{path}", headers=api.keys["beta"]), 404)
    error(api.client.post(f"/v1/fine_tuning/jobs/{made[0]}/cancel", headers=api.keys["beta"]), 404)
    error(api.client.get("/v1/fine_tuning/jobs", params={"limit": 0}, headers=api.keys["acme"]), 400, "limit")


def test_events_and_checkpoints(api: Api) -> None:
    job = api.create(model=BASE, training_file=api.upload("acme", CHAT, CHAT))
    for step in (1, 2):
        job_records.add_event(
            api.db,
            job["id"],
            f"Step {step}/2: training loss={1 / step:.4f}",
            data={"step": step, "total_steps": 2, "train_loss": 1 / step},
        )
    job_records.add_event(api.db, job["id"], "Something odd", level="warn")
    path = f"/v1/fine_tuning/jobs/{job['id']}"

    events = api.get(f"{path}/events", schema="ListFineTuningJobEventsResponse", limit=2)
    assert [e["message"] for e in events["data"]] == ["Something odd", "Step 2/2: training loss=0.5000"]
    assert [(e["type"], e["level"]) for e in events["data"]] == [("message", "warn"), ("metrics", "info")]
    assert events["data"][1]["data"]["train_loss"] == 0.5 and events["has_more"] is True
    for e in events["data"]:
        validate(e, "FineTuningJobEvent")
    older = api.get(f"{path}/events", schema="ListFineTuningJobEventsResponse", after=events["data"][-1]["id"])
    assert [e["data"].get("step") for e in older["data"]] == [1, None]  # step 1, then "Created ..."
    assert older["has_more"] is False
    error(api.client.get(f"{path}/events", params={"after": "nope"}, headers=api.keys["acme"]), 400, "after")

    empty = api.get(f"{path}/checkpoints", schema="ListFineTuningJobCheckpointsResponse")
    assert (empty["data"], empty["first_id"], empty["last_id"]) == ([], None, None)
    for step in (5, 10):
        job_records.add_checkpoint(
            api.db,
            job["id"],
            step=step,
            metrics={"step": step, "train_loss": 0.1},
            path=f"checkpoints/x/{job['id']}/step-{step}",
        )
    cps = api.get(f"{path}/checkpoints", schema="ListFineTuningJobCheckpointsResponse")
    assert [c["step_number"] for c in cps["data"]] == [10, 5]
    assert (cps["first_id"], cps["last_id"]) == (cps["data"][0]["id"], cps["data"][1]["id"])
    name = job["metadata"]["tailor_adapter_name"]
    assert cps["data"][0]["fine_tuned_model_checkpoint"] == f"{name}:{job['id']}:ckpt-step-10"
    assert cps["data"][0]["metrics"] == {"step": 10.0, "train_loss": 0.1}
    for c in cps["data"]:
        validate(c, "FineTuningJobCheckpoint")
    page = api.get(f"{path}/checkpoints", schema="ListFineTuningJobCheckpointsResponse", after=cps["data"][0]["id"])
    assert [c["step_number"] for c in page["data"]] == [5]


# --- cancelling and finishing -----------------------------------------------------


def test_cancel_queued_and_running(api: Api) -> None:
    file_id = api.upload("acme", CHAT, CHAT)
    queued = api.create(model=BASE, training_file=file_id)
    r = api.client.post(f"/v1/fine_tuning/jobs/{queued['id']}/cancel", headers=api.keys["acme"])
    assert r.status_code == 200, r.text
    validate(r.json(), "FineTuningJob")
    assert r.json()["status"] == "cancelled" and r.json()["finished_at"] is not None

    running = api.create(model=BASE, training_file=file_id)
    claimed = job_queue.claim_next(api.db, "w1")
    assert claimed is not None and claimed.id == running["id"]
    r = api.client.post(f"/v1/fine_tuning/jobs/{running['id']}/cancel", headers=api.keys["acme"])
    body = r.json()
    validate(body, "FineTuningJob")
    # still running until the worker reaches its next step
    assert body["status"] == "running" and body["metadata"]["tailor_cancel_requested"] == "true"
    assert job_queue.heartbeat(api.db, running["id"], "w1") is True
    job_queue.finish_job(api.db, running["id"], "w1", status="cancelled")
    assert api.get(f"/v1/fine_tuning/jobs/{running['id']}")["status"] == "cancelled"


def test_finished_jobs_evaluation_and_report(api: Api) -> None:
    services = api.app.state.services
    file_id = api.upload("acme", CHAT, CHAT)
    ok, bad = (api.create(model=BASE, training_file=file_id, suffix="geo") for _ in range(2))
    for _ in (ok, bad):
        assert job_queue.claim_next(api.db, "w1") is not None
    path = f"/v1/fine_tuning/jobs/{ok['id']}"
    error(api.client.get(f"{path}/evaluation", headers=api.keys["acme"]), 404)

    prefix = f"reports/{api.ids['acme']}/{ok['id']}"
    services.blobs.put_bytes(f"{prefix}/report.json", b'{"job_id": "x"}')
    services.blobs.put_bytes(f"{prefix}/loss.png", b"\x89PNG fake")
    job_records.record_evaluation(
        api.db,
        tenant_id=api.ids["acme"],
        job_id=ok["id"],
        candidate_version_id="av-2",
        baseline_version_id="av-1",
        dataset_id="ds-1",
        candidate_metrics={"n": 2, "exact_match": 1.0, "perplexity": None},
        baseline_metrics={"n": 2, "exact_match": 0.0, "perplexity": 9.0},
        decision="candidate",
        reasons=["exact_match better", "promote: ..."],
        report_key=f"{prefix}/report.json",
    )
    job_queue.finish_job(
        api.db,
        ok["id"],
        "w1",
        status="succeeded",
        fine_tuned_model="geo@v2",
        result_version_id="av-2",
        decision="candidate",
        metrics={"train_loss": 0.1},
        trained_tokens=1234,
    )
    failure = {"code": "no_training_data", "message": "nothing to learn", "param": None}
    job_queue.finish_job(api.db, bad["id"], "w1", status="failed", error=failure)

    done = api.get(path, schema="FineTuningJob")
    assert (done["status"], done["fine_tuned_model"]) == ("succeeded", "geo@v2")
    assert done["trained_tokens"] == 1234
    assert isinstance(done["finished_at"], int)
    assert done["metadata"]["tailor_decision"] == "candidate"
    assert done["metadata"]["tailor_report_url"] == f"{path}/report.png"
    failed = api.get(f"/v1/fine_tuning/jobs/{bad['id']}", schema="FineTuningJob")
    assert failed["error"] == failure
    error(api.client.post(f"{path}/cancel", headers=api.keys["acme"]), 409)

    evaluation = api.get(f"{path}/evaluation")
    assert evaluation["decision"] == "candidate" and evaluation["baseline_version_id"] == "av-1"
    assert evaluation["candidate"]["exact_match"] == 1.0
    assert evaluation["reasons"][0] == "exact_match better"
    assert evaluation["report_png_url"] == f"{path}/report.png"
    png = api.client.get(f"{path}/report.png", headers=api.keys["acme"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == b"\x89PNG fake"
    assert api.get(f"{path}/report.json") == {"job_id": "x"}


# --- operator route ---------------------------------------------------------------


def test_admin_trains_from_feedback(api: Api) -> None:
    url = "/admin/tenants/acme/train"
    error(api.client.post(url, json={"adapter_name": "helper"}), 401)
    # no feedback yet: refused now, not as a failed job later
    error(api.client.post(url, json={"adapter_name": "helper"}, headers=ADMIN), 400)
    with api.db.session() as s:
        for i in range(6):
            s.add(
                Feedback(
                    id=new_id("fb"),
                    tenant_id=api.ids["acme"],
                    rating="good",
                    source="import",
                    messages=[
                        {"role": "user", "content": f"Question {i}?"},
                        {"role": "assistant", "content": f"Answer {i}."},
                    ],
                )
            )
    r = api.client.post(url, json={"adapter_name": "helper", "hyperparameters": {"max_steps": 5}}, headers=ADMIN)
    assert r.status_code == 201, r.text
    job = r.json()
    validate(job, "FineTuningJob")
    assert job["training_file"] == "" and job["metadata"]["tailor_source"] == "feedback"
    assert job["metadata"]["tailor_dataset_id"].startswith("ds-")
    assert job["metadata"]["tailor_adapter_name"] == "helper" and job["model"] == BASE
    # the tenant sees the job like any other
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}")["id"] == job["id"]
    # only chat examples in the feedback: nothing for DPO
    error(api.client.post(url, json={"adapter_name": "helper", "method": "dpo"}, headers=ADMIN), 400)
    error(api.client.post("/admin/tenants/nobody/train", json={"adapter_name": "helper"}, headers=ADMIN), 404)


def test_openai_sdk_round_trip(api: Api) -> None:
    openai = pytest.importorskip("openai")
    key = api.keys["acme"]["authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=api.client)
    file_id = api.upload("acme", CHAT, CHAT)
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
    job = client.fine_tuning.jobs.create(model=BASE, training_file=file_id, suffix="sdk", method=method)
    assert job.status == "queued" and job.hyperparameters.n_epochs == 2
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]
    assert client.fine_tuning.jobs.retrieve(job.id).metadata["tailor_adapter_name"] == "sdk"
    assert [e.message for e in client.fine_tuning.jobs.list_events(job.id)] == [f"Created fine-tuning job: {job.id}"]
    assert list(client.fine_tuning.jobs.checkpoints.list(job.id)) == []
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model=BASE, training_file="file-nope")
