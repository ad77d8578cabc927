"""Pausing and resuming fine-tuning jobs, their `metadata` and `integrations`, and checkpoints
as models, on the real app (no engine, no worker).

A job's life on a worker (claimed, paused at a step with a checkpoint, claimed again) is
written with trainer.jobs as the worker writes it (the worker itself: tests/trainer/
test_worker_pause.py). Every OpenAI-route body is checked against OpenAI's schema; tenant
"beta" tries every route on tenant "acme"'s job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters import checkpoints, registry
from adapters.registry import ResolvedModel
from core.errors import TailorError
from core.states import VersionKind
from tests.adapters.test_model_validation import write_model
from tests.apputil import ADMIN, TenantsApi, error, make_app, ok, serve_tenants
from tests.gateway.gateway_world import TINY_CONFIG, write_tiny_adapter
from tests.openai_schema import validate
from trainer import job_queue, job_records, jobs

BASE = "tiny-base"
CHAT = {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Zorblax."}]}
JOBS = "/v1/fine_tuning/jobs"


class Api(TenantsApi):
    tmp: Path

    def upload(self, tenant: str = "acme") -> str:
        data = (json.dumps(CHAT) + "\n").encode() * 2
        r = self.client.post(
            "/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"}, headers=self.keys[tenant]
        )
        return str(ok(r)["id"])

    def create(self, tenant: str = "acme", **body: Any) -> dict[str, Any]:
        body = {"model": BASE, "training_file": self.upload(tenant), **body}
        job = ok(self.client.post(JOBS, json=body, headers=self.keys[tenant]))
        validate(job, "FineTuningJob")
        return job  # type: ignore[no-any-return]

    def post(self, path: str, tenant: str = "acme") -> Any:
        return self.client.post(f"{JOBS}/{path}", headers=self.keys[tenant])

    def job(self, job_id: str, tenant: str = "acme") -> dict[str, Any]:
        body = ok(self.client.get(f"{JOBS}/{job_id}", headers=self.keys[tenant]))
        validate(body, "FineTuningJob")
        return body  # type: ignore[no-any-return]

    def listed(self, tenant: str = "acme", **params: Any) -> list[str]:
        body = ok(self.client.get(JOBS, params=params, headers=self.keys[tenant]))
        validate(body, "ListPaginatedFineTuningJobsResponse")
        return [j["id"] for j in body["data"]]

    def messages(self, job_id: str) -> list[str]:
        return [e.message for e in job_records.list_events(self.db, None, job_id, limit=100)[0][::-1]]

    def checkpoint(self, job_id: str, step: int, *, stored: bool = True) -> job_records.CheckpointInfo:
        """A checkpoint as the worker saves one: its adapter in the adapter store (unless not `stored`)."""
        services = self.app.state.services
        digest = None
        if stored:
            source = write_tiny_adapter(self.tmp / f"ckpt-{job_id}-{step}")
            limits = services.limits
            digest = checkpoints.store_checkpoint(
                services.store, source, base=limits.base, max_rank=limits.max_rank, max_bytes=limits.max_bytes
            )
        metrics = {"step": step, "train_loss": 0.5}
        path = f"ckpt/{step}"
        return job_records.add_checkpoint(self.db, job_id, step=step, metrics=metrics, path=path, digest=digest)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    base = tmp_path / "tiny-llama"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(TINY_CONFIG))
    app = make_app(tmp_path / "data", base_model_path=base, base_model_name=BASE)
    with serve_tenants(app, Api) as api:
        api.tmp = tmp_path
        yield api


def paused_on_worker(api: Api, job_id: str, step: int = 3, total: int = 10) -> jobs.JobInfo:
    """What the worker does once its run paused at `step`: a checkpoint, then mark_paused."""
    saved = api.checkpoint(job_id, step)
    point = jobs.ResumePoint(step=step, total_steps=total, checkpoint_id=saved.id, losses=(1.0,) * step)
    return job_queue.mark_paused(api.db, job_id, "w1", point)


# --- pause and resume -----------------------------------------------------------------


def test_pause_a_running_job_then_resume_it(api: Api) -> None:
    job = api.create(suffix="geo")["id"]
    refused = error(api.post(f"{job}/pause"), 400)
    assert refused["code"] == "job_not_running" and "queued" in refused["message"]

    assert job_queue.claim_next(api.db, "w1") is not None
    r = api.post(f"{job}/pause")
    body = ok(r)
    validate(body, "FineTuningJob")
    # It runs until its training reaches the next step and saves a checkpoint there.
    assert body["status"] == "running" and body["metadata"]["tailor_pause_requested"] == "true"
    assert ok(api.post(f"{job}/pause"))["status"] == "running"  # asking twice changes nothing
    assert (
        api.messages(job).count("Pause requested; the job saves a checkpoint and pauses at its next training step") == 1
    )
    assert error(api.post(f"{job}/resume"), 400)["code"] == "job_not_paused"
    assert job_queue.stop_request(api.db, job, "w1") == "pause"
    assert job_queue.heartbeat(api.db, job, "w1") is False  # only a training run pauses

    paused_on_worker(api, job, step=3, total=10)
    body = api.job(job)
    assert body["status"] == "paused" and body["finished_at"] is None
    assert body["metadata"]["tailor_paused_at_step"] == "3" and "tailor_pause_requested" not in body["metadata"]
    again = error(api.post(f"{job}/pause"), 400)
    assert again["code"] == "job_not_running" and "already paused" in again["message"]
    assert "Job paused after step 3 of 10; resume continues from its checkpoint" in api.messages(job)

    r = api.post(f"{job}/resume")
    body = ok(r)
    validate(body, "FineTuningJob")
    assert body["status"] == "queued" and "tailor_paused_at_step" not in body["metadata"]
    assert api.messages(job)[-1] == "Job resumed; queued to continue from step 3 of 10"
    assert error(api.post(f"{job}/resume"), 400)["code"] == "job_not_paused"

    claimed = job_queue.claim_next(api.db, "w2")
    assert claimed is not None and claimed.id == job
    # The pause ended the first attempt cleanly: this is attempt 1 again, from step 3.
    assert claimed.attempts == 1 and claimed.resume is not None and claimed.resume.step == 3

    actions = {e["action"]: e for e in ok(api.client.get("/v1/audit", headers=api.keys["acme"]))["data"]}
    assert actions["job.pause"]["after"] == {"status": "running", "pause_requested": True}
    assert actions["job.resume"]["after"] == {"status": "queued", "resume_step": 3}
    assert actions["job.pause"]["target"] == job


def test_pause_and_resume_are_tenant_scoped(api: Api) -> None:
    job = api.create()["id"]
    assert job_queue.claim_next(api.db, "w1") is not None
    for action in ("pause", "resume"):
        assert error(api.post(f"{job}/{action}", tenant="beta"), 404)["code"] == "fine_tuning_job_not_found"
        error(api.client.post(f"{JOBS}/{job}/{action}"), 401)
    assert api.job(job)["status"] == "running" and not jobs.get_job(api.db, None, job).pause_requested
    api.post(f"{job}/pause")
    paused_on_worker(api, job)
    error(api.post(f"{job}/resume", tenant="beta"), 404)
    assert api.job(job)["status"] == "paused"


def test_cancel_wins_over_pause(api: Api) -> None:
    first, second, third = (api.create()["id"] for _ in range(3))
    for _ in range(3):
        assert job_queue.claim_next(api.db, "w1") is not None
    # Cancelled, then asked to pause: refused.
    ok(api.post(f"{first}/cancel"))
    assert error(api.post(f"{first}/pause"), 400)["code"] == "job_cancel_requested"
    # Asked to pause, then cancelled before the worker stopped: the run is cancelled.
    ok(api.post(f"{second}/pause"))
    ok(api.post(f"{second}/cancel"))
    assert job_queue.stop_request(api.db, second, "w1") == "cancel"
    assert paused_on_worker(api, second).status == "cancelled"
    # A paused job is cancelled at once.
    ok(api.post(f"{third}/pause"))
    paused_on_worker(api, third)
    body = ok(api.post(f"{third}/cancel"))
    assert body["status"] == "cancelled" and body["finished_at"] is not None
    assert error(api.post(f"{third}/resume"), 400)["code"] == "job_not_paused"


def test_resume_takes_a_place_in_the_queue(api: Api) -> None:
    r = api.client.put("/admin/tenants/acme/limits", json={"max_queued_jobs": 1}, headers=ADMIN)
    assert r.status_code == 200, r.text
    job = api.create()["id"]
    assert job_queue.claim_next(api.db, "w1") is not None
    ok(api.post(f"{job}/pause"))
    paused_on_worker(api, job)
    api.create()  # the one place in the queue
    err = error(api.post(f"{job}/resume"), 429)
    assert err["code"] == "insufficient_quota"
    assert api.job(job)["status"] == "paused"


# --- metadata and integrations ------------------------------------------------------------


def test_metadata_is_kept_returned_and_filtered(api: Api) -> None:
    geo = api.create(metadata={"team": "geo", "run": "1"})
    other = api.create(metadata={"team": "geo", "run": "2"})
    bare = api.create()
    # The client's pairs, beside Tailor's own `tailor_` keys.
    assert {k: v for k, v in geo["metadata"].items() if not k.startswith("tailor_")} == {"team": "geo", "run": "1"}
    assert api.job(geo["id"])["metadata"]["run"] == "1"
    assert jobs.get_job(api.db, None, bare["id"]).metadata is None

    assert api.listed(**{"metadata[team]": "geo"}) == [other["id"], geo["id"]]
    assert api.listed(**{"metadata[team]": "geo", "metadata[run]": "1"}) == [geo["id"]]
    assert api.listed(**{"metadata[team]": "geo", "metadata[run]": "3"}) == []
    assert api.listed(**{"metadata[team]": ""}) == []
    assert api.listed(metadata="null") == [bare["id"]]
    assert api.listed(**{"metadata[team]": "geo"}, limit=1, after=other["id"]) == [geo["id"]]
    assert api.listed(tenant="beta", **{"metadata[team]": "geo"}) == []

    def listing(**params: str) -> Any:
        return api.client.get(JOBS, params=params, headers=api.keys["acme"])

    error(listing(**{"metadata[" + "k" * 65 + "]": "v"}), 400, "metadata")
    error(listing(**{"metadata[team]": "v" * 513}), 400, "metadata")
    error(listing(metadata="yes"), 400, "metadata")
    error(listing(metadata="null", **{"metadata[team]": "geo"}), 400, "metadata")


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ({"k" * 65: "v"}, "metadata"),
        ({"k": "v" * 513}, "metadata"),
        ({"tailor_decision": "promoted"}, "metadata"),
        ({"k": 1}, "metadata.k"),
        ("not a map", "metadata"),
    ],
)
def test_bad_metadata_is_a_400_naming_it(api: Api, metadata: Any, param: str) -> None:
    body = {"model": BASE, "training_file": api.upload(), "metadata": metadata}
    error(api.client.post(JOBS, json=body, headers=api.keys["acme"]), 400, param)
    assert api.listed() == []


def test_largest_metadata_is_accepted(api: Api) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    job = api.create(metadata=metadata)
    assert {k: job["metadata"][k] for k in metadata} == metadata


def test_integrations_are_accepted_and_ignored_with_a_warning(api: Api) -> None:
    wandb = {"type": "wandb", "wandb": {"project": "geo", "entity": "me", "tags": ["a"]}}
    job = api.create(integrations=[wandb, wandb])
    assert job["integrations"] is None and job["status"] == "queued"
    events = job_records.list_events(api.db, None, job["id"], limit=10)[0]
    (warning,) = [e for e in events if e.level == "warn"]
    assert warning.message.startswith("Integrations ignored: Tailor does not run wandb")
    assert warning.data == {"ignored_integrations": ["wandb"]}
    body = ok(api.client.get(f"{JOBS}/{job['id']}/events", headers=api.keys["acme"]))
    validate(body, "ListFineTuningJobEventsResponse")
    error(
        api.client.post(
            JOBS,
            json={"model": BASE, "training_file": api.upload(), "integrations": [{"type": "wandb"}]},
            headers=api.keys["acme"],
        ),
        400,
        "integrations.0.wandb",
    )


# --- checkpoints as models ----------------------------------------------------------------


def test_checkpoints_are_models_of_their_tenant(api: Api) -> None:
    job = api.create(suffix="geo")["id"]
    saved = api.checkpoint(job, 4)
    api.checkpoint(job, 8, stored=False)  # saved before checkpoints were stored: not callable
    cps = ok(api.client.get(f"{JOBS}/{job}/checkpoints", headers=api.keys["acme"]))
    validate(cps, "ListFineTuningJobCheckpointsResponse")
    names = [c["fine_tuned_model_checkpoint"] for c in cps["data"]]
    model = f"geo:{job}:ckpt-step-4"
    assert names == [f"geo:{job}:ckpt-step-8", model]

    # Routed to the checkpoint's files, under its own id: what the engine loads.
    services = api.app.state.services
    resolved = registry.resolve(api.db, api.ids["acme"], model, BASE)
    assert resolved == ResolvedModel(model, saved.id, saved.digest, resolved.created_at)
    assert services.store.exists(saved.digest)
    for name in (f"geo:{job}:ckpt-step-8", f"geo:{job}:ckpt-step-5", f"other:{job}:ckpt-step-4"):
        with pytest.raises(TailorError):
            registry.resolve(api.db, api.ids["acme"], name, BASE)
    with pytest.raises(TailorError) as foreign:
        registry.resolve(api.db, api.ids["beta"], model, BASE)
    assert foreign.value.code == "model_not_found"

    listed = ok(api.client.get("/v1/models", headers=api.keys["acme"]))
    validate(listed, "ListModelsResponse")
    assert [m["id"] for m in listed["data"]] == [BASE, model]
    card = ok(api.client.get(f"/v1/models/{model}", headers=api.keys["acme"]))
    validate(card, "Model")
    assert card == {"id": model, "object": "model", "created": card["created"], "owned_by": "acme"}
    assert model not in [m["id"] for m in ok(api.client.get("/v1/models", headers=api.keys["beta"]))["data"]]
    error(api.client.get(f"/v1/models/{model}", headers=api.keys["beta"]), 404, "model")
    error(api.client.get(f"/v1/models/geo:{job}:ckpt-step-8", headers=api.keys["acme"]), 404, "model")

    # Kept with the job: not deleted one by one (and another tenant's is unknown).
    assert error(api.client.delete(f"/v1/models/{model}", headers=api.keys["acme"]), 400)["code"] == (
        "cannot_delete_checkpoint"
    )
    assert error(api.client.delete(f"/v1/models/{model}", headers=api.keys["beta"]), 404)["code"] == "model_not_found"
    # Trained from: no; called: yes.
    body = {"model": model, "training_file": api.upload()}
    assert error(api.client.post(JOBS, json=body, headers=api.keys["acme"]), 400, "model")["code"] == "invalid_model"
    error(api.client.post(JOBS, json=body, headers=api.keys["beta"]), 404, "model")


def test_a_full_fine_tunes_checkpoints_are_served_as_whole_models(api: Api) -> None:
    """Its checkpoints are whole models: routed to engines of their own, not loaded as adapters."""
    full = {"type": "supervised", "supervised": {"hyperparameters": {"finetuning_type": "full"}}}
    whole, lora = api.create(suffix="whole", method=full)["id"], api.create(suffix="lora")["id"]
    for job in (whole, lora):
        api.checkpoint(job, 2)
    kinds = {
        name: registry.resolve(api.db, api.ids["acme"], f"{name}:{job}:ckpt-step-2", BASE).kind
        for job, name in ((whole, "whole"), (lora, "lora"))
    }
    assert kinds == {"whole": VersionKind.MODEL, "lora": VersionKind.ADAPTER}


def test_a_job_continues_a_version_of_its_own_kind(api: Api) -> None:
    services = api.app.state.services
    for name, source in (("whole", write_model(api.tmp / "model")), ("lora", write_tiny_adapter(api.tmp / "lora"))):
        registry.register_dir(
            services.db, services.store, services.limits, tenant_id=api.ids["acme"], name=name,
            source_dir=source, base_model_name=BASE, actor="test",
        )  # fmt: skip
    full = {"type": "supervised", "supervised": {"hyperparameters": {"finetuning_type": "full"}}}
    api.create(model="whole", method=full)
    api.create(model="lora")
    for model, method in (("whole", None), ("lora", full)):
        body = {"model": model, "training_file": api.upload(), **({"method": method} if method else {})}
        refused = error(api.client.post(JOBS, json=body, headers=api.keys["acme"]), 400, "model")
        assert refused["code"] == "incompatible_starting_model"


def test_checkpoints_sort_after_their_adapters_versions_and_page(api: Api) -> None:
    first = api.create(suffix="geo")["id"]
    for step in (10, 2):
        api.checkpoint(first, step)
    source = write_tiny_adapter(api.tmp / "version")
    body = {"name": "geo", "path": str(source), "activate": True}
    assert api.client.post("/admin/tenants/acme/adapters/register", json=body, headers=ADMIN).status_code == 201
    want = [BASE, "geo", "geo@v1", f"geo:{first}:ckpt-step-2", f"geo:{first}:ckpt-step-10"]
    assert [m["id"] for m in ok(api.client.get("/v1/models", headers=api.keys["acme"]))["data"]] == want
    page = ok(api.client.get("/v1/models", params={"after": "geo@v1", "limit": 1}, headers=api.keys["acme"]))
    assert [m["id"] for m in page["data"]] == [want[3]] and page["has_more"] is True


def test_deleting_a_version_keeps_files_a_checkpoint_shares(api: Api) -> None:
    job = api.create(suffix="geo")["id"]
    saved = api.checkpoint(job, 12)
    # The job's last checkpoint and the version it registers are the same bytes.
    services = api.app.state.services
    # v1: those bytes; v2 (other bytes) serves, so that v1 can go.
    for source in (api.tmp / f"ckpt-{job}-12", write_tiny_adapter(api.tmp / "other", r=2)):
        body = {"name": "geo", "path": str(source), "activate": True}
        assert api.client.post("/admin/tenants/acme/adapters/register", json=body, headers=ADMIN).status_code == 201
    assert registry.resolve(api.db, api.ids["acme"], "geo@v1", BASE).digest == saved.digest
    ok(api.client.delete("/v1/models/geo@v1", headers=api.keys["acme"]))
    ok(api.client.delete("/v1/adapters/geo", headers=api.keys["acme"]))
    assert services.store.exists(saved.digest)
    assert registry.resolve(api.db, api.ids["acme"], f"geo:{job}:ckpt-step-12", BASE).digest == saved.digest


def test_sdk_pauses_resumes_and_filters_by_metadata(api: Api) -> None:
    openai = pytest.importorskip("openai")
    key = api.keys["acme"]["authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=api.client)
    job = client.fine_tuning.jobs.create(model=BASE, training_file=api.upload(), metadata={"team": "geo"})
    client.fine_tuning.jobs.create(model=BASE, training_file=api.upload(), metadata={"team": "ops"})
    assert job.metadata is not None and job.metadata["team"] == "geo"
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "geo"})] == [job.id]
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.pause(job.id)
    assert refused.value.code == "job_not_running"
    assert job_queue.claim_next(api.db, "w1", job_id=job.id) is not None
    assert client.fine_tuning.jobs.pause(job.id).status == "running"
    paused_on_worker(api, job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"  # type: ignore[comparison-overlap]
    (checkpoint,) = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert checkpoint.fine_tuned_model_checkpoint == f"{job.metadata['tailor_adapter_name']}:{job.id}:ckpt-step-3"
    assert client.models.retrieve(checkpoint.fine_tuned_model_checkpoint).owned_by == "acme"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(
            api_key=api.keys["beta"]["authorization"].removeprefix("Bearer "),
            base_url="http://testserver/v1",
            http_client=api.client,
        ).fine_tuning.jobs.pause(job.id)
