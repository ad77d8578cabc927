"""`/v1/fine_tuning/jobs` and `/admin/tenants/{t}/train` on the real app (no engine, no worker):
reading, cancelling and finishing jobs, the operator's route and the official SDK. Creating
them: test_fine_tuning_create_api.py.

Every OpenAI-route body is checked against OpenAI's schema. Training itself is the worker's
(tests/trainer/test_worker.py); here a job's later life (claimed, finished, evaluated) is
written with trainer.jobs directly, as a worker would, and read back through the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.ids import new_id
from core.models import Feedback
from tests.apputil import ADMIN, error
from tests.gateway.fine_tuning_world import BASE, CHAT, Api, serve_api
from tests.openai_schema import validate
from trainer import job_queue, job_records


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from serve_api(tmp_path)


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
