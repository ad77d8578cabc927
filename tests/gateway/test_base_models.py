"""Several base models (TAILOR_BASE_MODELS, core.base_models) on the real app against fake vLLMs:
one engine pool per base, /v1/models listing every base, requests and
adapters served on their own base's engines, and registration checked against the named base.

The default base is the tiny Llama (2 layers); "tiny-half" is a 1-layer cut of it on another
engine. (A live run on two real vLLM engines: tests/integration/test_derived_model_engine.py.)
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select

from adapters import checkpoints
from adapters.registry import ValidationLimits
from core.models import AdapterVersion
from tests.gateway.gateway_world import (
    ADMIN,
    BASE,
    ENGINE,
    FakeVLLM,
    Running,
    error_of,
    new_tenant,
    running_gateway,
    serial,
    write_tiny_adapter,
)
from tests.openai_schema import validate
from tests.tiny_llama import TINY_CONFIG
from trainer import job_records

pytestmark = pytest.mark.asyncio(loop_scope="module")

HALF = "tiny-half"
HALF_ENGINE = "http://half-engine.test"
HALF_KEY = "sk-half-" + "h" * 16


# --------------------------------------------------------------------------- the gateway


@contextlib.asynccontextmanager
async def two_bases(tmp: Path, **overrides: Any) -> AsyncIterator[Running]:
    """The gateway with the tiny Llama and its 1-layer cut as bases, and one tenant (`auth`)."""
    half_dir = tmp / HALF
    half_dir.mkdir()
    (half_dir / "config.json").write_text(json.dumps({**TINY_CONFIG, "num_hidden_layers": 1}))
    bases = {
        BASE: {"path": str(tmp / "tiny-llama"), "engine_urls": [ENGINE]},
        HALF: {"path": str(half_dir), "engine_urls": [HALF_ENGINE], "api_key": HALF_KEY},
    }
    half = FakeVLLM(base=HALF)
    async with running_gateway(tmp, other_engines={HALF_ENGINE: half}, base_models=bases, **overrides) as running:
        _, running.auth = await new_tenant(running, "acme")  # type: ignore[attr-defined]
        running.half = half  # type: ignore[attr-defined]
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async with two_bases(tmp_path_factory.mktemp("bases")) as running:
        yield running


def _archive(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(directory.iterdir()):
            tar.add(f, arcname=f.name)
    return buf.getvalue()


async def _upload(run: Running, name: str, source: Path, **fields: str) -> Any:
    files = {"file": ("a.tar.gz", _archive(source), "application/gzip")}
    return await run.http.post("/v1/adapters", data={"name": name, **fields}, files=files, headers=run.auth)  # type: ignore[attr-defined]


async def _chat(run: Running, model: str) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return await run.http.post("/v1/chat/completions", json=body, headers=run.auth)  # type: ignore[attr-defined]


async def test_every_base_is_listed_and_found(run: Running) -> None:
    auth = run.auth  # type: ignore[attr-defined]
    listed = (await run.http.get("/v1/models", headers=auth)).json()
    validate(listed, "ListModelsResponse")
    assert [m["id"] for m in listed["data"]][:2] == [BASE, HALF]
    card = (await run.http.get(f"/v1/models/{HALF}", headers=auth)).json()
    validate(card, "Model")
    assert card["id"] == HALF
    paged = (await run.http.get("/v1/models", params={"after": BASE, "limit": 1}, headers=auth)).json()
    assert [m["id"] for m in paged["data"]] == [HALF]
    # A base cannot be deleted, whichever it is.
    deleted = await run.http.delete(f"/v1/models/{HALF}", headers=auth)
    assert error_of(deleted, 400)["code"] == "cannot_delete_base_model"


async def test_each_base_answers_on_its_own_engines(run: Running) -> None:
    half: FakeVLLM = run.half  # type: ignore[attr-defined]
    before_default, before_half = len(run.fake.completions()), len(half.completions())
    for model in (BASE, HALF):
        r = await _chat(run, model)
        assert r.status_code == 200, r.text
        validate(r.json(), "CreateChatCompletionResponse")
    assert [s.body["model"] for s in run.fake.completions()[before_default:]] == [BASE]
    [seen] = half.completions()[before_half:]
    assert (seen.body["model"], seen.authorization) == (HALF, f"Bearer {HALF_KEY}")  # its own engine key


async def test_an_adapter_serves_on_the_base_it_was_registered_for(run: Running) -> None:
    half: FakeVLLM = run.half  # type: ignore[attr-defined]
    source = write_tiny_adapter(run.tmp / f"half-{next(serial)}", layers=1, made_for=HALF)
    # Made for the 1-layer base: its shapes fit the first layer of the default base too, but
    # its config names the other base.
    refused = error_of(await _upload(run, "halfling", source), 400)
    assert refused["code"] == "invalid_adapter" and HALF in refused["message"]
    r = await _upload(run, "halfling", source, base_model=HALF)
    assert r.status_code == 201, r.text
    before = len(half.completions())
    r = await _chat(run, "halfling")
    assert r.status_code == 200, r.text
    [seen] = half.completions()[before:]
    assert seen.body["model"] in half.loras  # loaded on the half base's engine
    assert all(s.body["lora_name"] not in half.loras for s in run.fake.loads())


async def test_a_default_base_adapter_does_not_fit_the_smaller_base(run: Running) -> None:
    source = write_tiny_adapter(run.tmp / f"full-{next(serial)}")  # both layers
    refused = error_of(await _upload(run, "wide", source, base_model=HALF), 400)
    assert refused["code"] == "invalid_adapter"
    body = {"name": "wide", "path": str(source), "base_model": BASE}
    r = await run.http.post("/admin/tenants/acme/adapters/register", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("base", ["nope", str(Path("/etc").resolve()), "http://169.254.169.254/latest", "../tiny-half"])
async def test_an_unknown_base_is_refused(run: Running, base: str) -> None:
    source = write_tiny_adapter(run.tmp / f"any-{next(serial)}")
    refused = error_of(await _upload(run, "other", source, base_model=base), 400, param="base_model")
    assert refused["code"] == "unknown_base_model"
    body = {"name": "other", "path": str(source), "base_model": base}
    r = await run.http.post("/admin/tenants/acme/adapters/register", json=body, headers=ADMIN)
    assert error_of(r, 400, param="base_model")["code"] == "unknown_base_model"


async def test_no_adapter_takes_a_base_name(run: Running) -> None:
    source = write_tiny_adapter(run.tmp / f"named-{next(serial)}")
    refused = error_of(await _upload(run, HALF, source), 400, param="name")
    assert "base model" in refused["message"]


async def _training_file(run: Running) -> str:
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    files = {"file": ("t.jsonl", (json.dumps(row) + "\n").encode(), "application/jsonl")}
    r = await run.http.post("/v1/files", data={"purpose": "fine-tune"}, files=files, headers=run.auth)  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def _create_job(run: Running, model: str, method: dict[str, Any] | None = None, **fields: Any) -> Any:
    body = {"model": model, "training_file": await _training_file(run), **fields}
    if method is not None:
        body["method"] = method
    return await run.http.post("/v1/fine_tuning/jobs", json=body, headers=run.auth)  # type: ignore[attr-defined]


async def test_lora_jobs_train_on_the_base_they_name(run: Running) -> None:
    source = write_tiny_adapter(run.tmp / f"tuned-{next(serial)}", layers=1, made_for=HALF)
    r = await _upload(run, "half-tuned", source, base_model=HALF)
    assert r.status_code == 201, r.text
    for model, suffix in ((HALF, "half-job"), ("half-tuned", "half-tuned"), ("half-tuned@v1", None)):
        r = await _create_job(run, model, suffix=suffix)
        assert r.status_code == 200, r.text
        validate(r.json(), "FineTuningJob")
        assert r.json()["model"] == model
    r = await _create_job(run, HALF, {"type": "dpo", "dpo": {}}, suffix="half-dpo")
    # Accepted on this base: the file is refused for what a dpo job reads, not the base.
    assert error_of(r, 400, param="training_file")
    # The default base's jobs record nothing more than before.
    r = await _create_job(run, BASE, suffix="default-job")
    assert r.status_code == 200, r.text


async def _half_checkpoint(run: Running, suffix: str) -> tuple[str, job_records.CheckpointInfo]:
    """(job id, its step-1 checkpoint) of a job on the 1-layer base."""
    return await _job_checkpoint(run, HALF, suffix)


async def _job_checkpoint(
    run: Running, base: str, suffix: str, method: dict[str, Any] | None = None, rank: int = 4
) -> tuple[str, job_records.CheckpointInfo]:
    """(job id, its step-1 checkpoint) of a job on `base` (for its checkpoint's files, a LoRA
    of that base)."""
    r = await _create_job(run, base, method, suffix=suffix)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    settings = run.services.settings
    limits = ValidationLimits.from_settings(settings, settings.base(base))
    half = base == HALF
    shape: dict[str, Any] = {"layers": 1, "made_for": HALF} if half else {}
    source = write_tiny_adapter(run.tmp / f"ckpt-{next(serial)}", rank, **shape)
    digest = checkpoints.store_checkpoint(
        run.services.store, source, base=limits.base, max_rank=limits.max_rank, max_bytes=limits.max_bytes
    )
    return job_id, job_records.add_checkpoint(run.services.db, job_id, step=1, metrics={}, path="ckpt", digest=digest)


async def test_a_jobs_checkpoint_serves_on_the_jobs_base(run: Running) -> None:
    job_id, saved = await _half_checkpoint(run, "half-ckpt")
    before = len(run.half.completions())  # type: ignore[attr-defined]
    r = await _chat(run, checkpoints.checkpoint_model("half-ckpt", job_id, 1))
    assert r.status_code == 200, r.text
    assert [c.body["model"] for c in run.half.completions()[before:]] == [saved.id]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("method", "hyperparameters", "said"),
    [
        (
            {
                "type": "reinforcement",
                "reinforcement": {
                    "grader": {"type": "string_check", "name": "g", "input": "a", "reference": "b", "operation": "eq"}
                },
            },
            {},
            "reinforcement method",
        ),
        ({"type": "distillation", "distillation": {"teacher": {"model": HALF}}}, {}, "distillation method"),
        (None, {"finetuning_type": "full"}, "full fine-tuning"),
    ],
)
async def test_other_methods_stay_on_the_default_base(
    run: Running, method: dict[str, Any] | None, hyperparameters: dict[str, Any], said: str
) -> None:
    r = await _create_job(run, HALF, method, hyperparameters=hyperparameters)
    refused = error_of(r, 400, param="model")
    assert refused["code"] == "unsupported_base_model" and said in refused["message"]


async def test_a_job_cannot_mix_bases(run: Running) -> None:
    # The suffix names an adapter of the default base: a job on the other base cannot add to it.
    source = write_tiny_adapter(run.tmp / f"wide-{next(serial)}")
    assert (await _upload(run, "wide-only", source)).status_code == 201
    refused = error_of(await _create_job(run, HALF, suffix="wide-only"), 400, param="suffix")
    assert refused["code"] == "unsupported_base_model" and HALF in refused["message"]


@pytest.mark.parametrize(
    "model", ["nope", str(Path("/etc").resolve()), "http://169.254.169.254/latest", "../tiny-half"]
)
async def test_an_unknown_base_cannot_train(run: Running, model: str) -> None:
    refused = error_of(await _create_job(run, model), 404, param="model")
    assert refused["code"] == "model_not_found"


async def test_another_tenants_adapter_of_a_base_cannot_train(run: Running) -> None:
    r = await run.http.post("/admin/tenants", json={"name": "globex"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    r = await run.http.post("/admin/tenants/globex/keys", json={}, headers=ADMIN)
    theirs = {"authorization": f"Bearer {r.json()['key']}"}
    source = write_tiny_adapter(run.tmp / f"theirs-{next(serial)}", layers=1, made_for=HALF)
    files = {"file": ("a.tar.gz", _archive(source), "application/gzip")}
    data = {"name": "globex-half", "base_model": HALF}
    assert (await run.http.post("/v1/adapters", data=data, files=files, headers=theirs)).status_code == 201
    refused = error_of(await _create_job(run, "globex-half"), 404, param="model")
    assert refused["code"] == "model_not_found"


async def test_a_job_may_name_candidate_bases(run: Running) -> None:
    r = await _create_job(run, HALF, suffix="picked", candidate_models=[HALF, BASE])
    assert r.status_code == 200, r.text
    validate(r.json(), "FineTuningJob")
    assert r.json()["candidate_models"] == [HALF, BASE]
    r = await run.http.get(f"/v1/fine_tuning/jobs/{r.json()['id']}", headers=run.auth)  # type: ignore[attr-defined]
    assert r.json()["candidate_models"] == [HALF, BASE]
    r = await _create_job(run, BASE, {"type": "dpo", "dpo": {}}, candidate_models=[BASE, HALF])
    assert error_of(r, 400, param="training_file")  # the file, not the candidates
    # A plain job shows none.
    r = await _create_job(run, BASE, suffix="plain")
    assert r.status_code == 200 and r.json()["candidate_models"] is None


@pytest.mark.parametrize(
    ("model", "candidates", "code"),
    [
        (BASE, [BASE], "invalid_candidate_models"),
        (BASE, [BASE, BASE], "invalid_candidate_models"),
        (BASE, "tiny-half", "invalid_request_error"),
        (BASE, [BASE, HALF, HALF + "x", "a", "b"], "invalid_candidate_models"),
        (BASE, [BASE, str(Path("/etc").resolve())], "unknown_base_model"),
        (BASE, [BASE, "http://169.254.169.254/latest"], "unknown_base_model"),
        (BASE, [BASE, "globex-half"], "unknown_base_model"),
        (BASE, [HALF, "half-tuned"], "unknown_base_model"),
        (HALF, [BASE, "half-tuned"], "unknown_base_model"),
    ],
)
async def test_candidate_bases_are_checked(run: Running, model: str, candidates: Any, code: str) -> None:
    refused = error_of(await _create_job(run, model, candidate_models=candidates), 400, param="candidate_models")
    assert refused["code"] == code or refused.get("type") == code, refused
    assert "169.254" not in refused["message"] and "/etc" not in refused["message"]


async def test_candidate_bases_train_lora_methods_only(run: Running) -> None:
    r = await _create_job(run, BASE, hyperparameters={"finetuning_type": "full"}, candidate_models=[BASE, HALF])
    assert error_of(r, 400, param="candidate_models")["code"] == "unsupported_base_model"
    grader = {"type": "string_check", "name": "g", "input": "a", "reference": "b", "operation": "eq"}
    method = {"type": "reinforcement", "reinforcement": {"grader": grader}}
    r = await _create_job(run, BASE, method, candidate_models=[BASE, HALF])
    assert error_of(r, 400, param="candidate_models")["code"] == "unsupported_base_model"
    # The model must be a candidate: an adapter (continuing it) is not.
    r = await _create_job(run, "wide-only", candidate_models=[BASE, HALF])
    assert error_of(r, 400, param="candidate_models")["code"] == "invalid_candidate_models"


async def test_candidates_cannot_replace_an_adapter_of_another_base(run: Running) -> None:
    source = write_tiny_adapter(run.tmp / f"serving-{next(serial)}")
    assert (await _upload(run, "serving-wide", source)).status_code == 201
    r = await _create_job(run, BASE, suffix="serving-wide", candidate_models=[BASE, HALF])
    refused = error_of(r, 400, param="suffix")
    assert refused["code"] == "unsupported_base_model" and HALF in refused["message"]


async def test_merges_stay_on_the_default_base(run: Running) -> None:
    source = write_tiny_adapter(run.tmp / f"merged-{next(serial)}", layers=1, made_for=HALF)
    r = await _upload(run, "half-merged", source, base_model=HALF)
    assert r.status_code == 201, r.text
    r = await run.http.post("/v1/adapters/half-merged/merge", json={}, headers=run.auth)  # type: ignore[attr-defined]
    assert error_of(r, 400, param="version")["code"] == "unsupported_base_model"


# --------------------------------------------------------------------------- engines fetching adapters

ENGINE_KEY = "engine-key-" + "x" * 20


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fetching(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """Both bases' engines fetch adapters from the gateway, each base's with its own key."""
    tmp = tmp_path_factory.mktemp("fetching")
    async with two_bases(tmp, engine_adapter_source="url", engine_api_key=ENGINE_KEY) as running:
        yield running


async def test_an_engine_key_reads_only_its_own_bases_adapters(fetching: Running) -> None:
    # Whoever runs one base's engines (its key) must not read what was trained for another.
    run = fetching
    main = await _upload(run, "main-a", write_tiny_adapter(run.tmp / f"main-{next(serial)}"))
    half = await _upload(run, "half-a", write_tiny_adapter(run.tmp / f"half-{next(serial)}", layers=1, made_for=HALF),
                         base_model=HALF)  # fmt: skip
    assert main.status_code == half.status_code == 201, (main.text, half.text)
    _, checkpoint = await _half_checkpoint(run, "half-ckpt")
    # A full fine-tune's checkpoints are whole models: engines never fetch them, whoever asks.
    full = {"type": "supervised", "supervised": {"hyperparameters": {"finetuning_type": "full"}}}
    _, whole = await _job_checkpoint(run, BASE, "whole", full, rank=8)  # files of its own
    with run.services.db.session() as s:
        versions = {v.adapter.name: (v.id, v.digest) for v in s.scalars(select(AdapterVersion))}
    own = {
        ENGINE_KEY: [versions["main-a"]],
        HALF_KEY: [versions["half-a"], (checkpoint.id, checkpoint.digest)],
        "nobody's": [(whole.id, whole.digest)],
    }
    for key, readable in list(own.items())[:2]:
        others = [entry for k, entries in own.items() if k != key for entry in entries]
        auth = {"authorization": f"Bearer {key}"}
        for (name, digest), allowed in [(entry, True) for entry in readable] + [(entry, False) for entry in others]:
            r = await run.http.get(f"/internal/engine/adapters/{name}", headers=auth)
            assert r.status_code == (200 if allowed else 404), (key[:6], name, r.text)
            assert not allowed or r.json()["digest"] == digest
            r = await run.http.get(f"/internal/engine/store/{digest[:2]}/{digest}/adapter_config.json", headers=auth)
            assert r.status_code == (200 if allowed else 404), (key[:6], name, r.text)
            if not allowed:
                assert error_of(r, 404)["code"] == "adapter_not_stored"
    # A tenant's key is no engine's.
    r = await run.http.get(f"/internal/engine/adapters/{versions['main-a'][0]}", headers=run.auth)  # type: ignore[attr-defined]
    assert r.status_code == 401
