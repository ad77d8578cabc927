"""Creating fine-tuning jobs through `/v1/fine_tuning/jobs` on the real app (no engine, no
worker): supervised, DPO, KTO, distillation and reinforcement jobs, and what is refused. Every
body is checked against OpenAI's schema. Reading, cancelling and finishing jobs:
test_fine_tuning_api.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apputil import error
from tests.gateway.fine_tuning_world import BASE, CHAT, PREF, Api, serve_api
from tests.job_defaults import supervised_hyperparameters
from trainer import jobs


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from serve_api(tmp_path)


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
        "supervised": {"hyperparameters": supervised_hyperparameters(batch_size=2)},
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
    hp = {"n_epochs": 2, "compute_multiplier": 2, "eval_interval": 5, "reasoning_effort": "low", "group_size": 6,
          "sampler": "trainer"}  # fmt: skip
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
    assert plain["method"]["reinforcement"]["hyperparameters"]["sampler"] == "auto"
    # another tenant sees neither the job nor its grader
    r = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=api.keys["beta"])
    error(r, 404)


JUDGE = {"type": "score_model", "name": "judge", "model": BASE, "range": [0, 1],
         "input": [{"role": "user", "content": "Is {{ sample.output_text }} {{ item.answer }}?"}]}  # fmt: skip


def test_every_grader_type_the_grader_routes_take_makes_a_reinforcement_job(api: Api) -> None:
    rows = api.upload("acme", RFT_ROW)
    similar = {**GRADER, "type": "text_similarity", "evaluation_metric": "fuzzy_match"}
    similar.pop("operation")
    # OpenAI's schema's form of a multi grader: one grader, named in the formula by its name
    multi = {"type": "multi", "name": "judged", "graders": JUDGE, "calculate_output": "judge * 2"}
    for spec in (similar, JUDGE, multi):
        validated = api.client.post("/v1/fine_tuning/alpha/graders/validate", json={"grader": spec},
                                    headers=api.keys["acme"])  # fmt: skip
        assert validated.status_code == 200, validated.text
        job = api.create(model=BASE, training_file=rows, method=reinforcement(grader=spec))
        # stored and shown as /validate answers it
        assert job["method"]["reinforcement"]["grader"] == validated.json()["grader"]


def test_reinforcement_refusals(api: Api) -> None:
    rows, chat = api.upload("acme", RFT_ROW), api.upload("acme", CHAT)
    foreign = api.upload("beta", RFT_ROW)

    def post(method: object, training_file: str = rows):  # type: ignore[no-untyped-def]
        body = {"model": BASE, "training_file": training_file, "method": method}
        return api.client.post("/v1/fine_tuning/jobs", json=body, headers=api.keys["acme"])

    grader = "method.reinforcement.grader"
    error(post({"type": "reinforcement"}), 400, grader)
    error(post(reinforcement(grader=None)), 400, grader)
    python = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}
    # Python graders only where the operator enabled them, with the grader routes' code
    assert error(post(reinforcement(grader=python)), 400, f"{grader}.type")["code"] == "python_grader_disabled"
    error(post(reinforcement(grader={**GRADER, "operation": "regex"})), 400, f"{grader}.operation")
    error(post(reinforcement(grader={**GRADER, "input": "{{ item.answer | upper }}"})), 400, f"{grader}.input")
    error(post(reinforcement(grader={**GRADER, "reference": "{{ env.HOME }}"})), 400, f"{grader}.reference")
    label = {"type": "label_model", "name": "l", "model": BASE, "input": [{"role": "user", "content": "x"}],
             "labels": ["a"], "passing_labels": ["a"]}  # fmt: skip
    error(post(reinforcement(grader=label)), 400, f"{grader}.type")  # only inside a multi grader
    error(post(reinforcement(grader={**JUDGE, "range": [1, 0]})), 400, f"{grader}.range")
    # a grader model that is not the tenant's (another tenant's adapter, any unknown name) nor the operator's
    unknown = error(post(reinforcement(grader={**JUDGE, "model": "not-mine"})), 400, f"{grader}.model")
    assert unknown["code"] == "invalid_grader" and "'not-mine'" in unknown["message"]
    multi = {"type": "multi", "name": "m", "graders": {**JUDGE, "model": "not-mine"}, "calculate_output": "judge"}
    error(post(reinforcement(grader=multi)), 400, f"{grader}.model")
    error(post(reinforcement(group_size=1)), 400, "hyperparameters.group_size")
    error(post(reinforcement(reasoning_effort="max")), 400, "hyperparameters.reasoning_effort")
    # where answers are sampled is Tailor's choice of two, never a URL or a model of the tenant's
    for sampler in ("vllm", "http://169.254.169.254/", BASE, ["engine"]):
        error(post(reinforcement(sampler=sampler)), 400, "hyperparameters.sampler")
    error(post(reinforcement(packing=True)), 400, "hyperparameters.packing")
    error(post(reinforcement(), training_file=chat), 400, "training_file")  # answers, not prompts to grade
    error(post(reinforcement(), training_file=foreign), 400, "training_file")
    assert api.get("/v1/fine_tuning/jobs")["data"] == []


def test_full_fine_tuning_is_a_hyperparameter_and_refuses_lora_knobs(api: Api) -> None:
    file_id = api.upload("acme", CHAT, CHAT)
    full = {"finetuning_type": "full", "n_epochs": 2}
    method = {"type": "supervised", "supervised": {"hyperparameters": full}}
    job = api.create(model=BASE, training_file=file_id, method=method)
    assert job["method"]["supervised"]["hyperparameters"]["finetuning_type"] == "full"

    def refused(hyperparameters: dict[str, object], param: str) -> dict[str, object]:
        body = {"model": BASE, "training_file": file_id}
        body["method"] = {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}
        r = api.client.post("/v1/fine_tuning/jobs", json=body, headers=api.keys["acme"])
        return error(r, 400, f"hyperparameters.{param}")

    for knob, value in (("lora_rank", 4), ("target_modules", ["q_proj"]), ("quantization", "4bit")):
        assert "LoRA" in str(refused({**full, knob: value}, knob)["message"])
    refused({"finetuning_type": "all"}, "finetuning_type")
