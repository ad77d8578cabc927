"""trainer.jobs: fine-tuning jobs on SQLite.

Creation and hyperparameter checks, tenant scoping, pagination, metadata, evaluations,
pausing and resuming. Claiming, heartbeats, finishing and the sweep of jobs whose worker
went quiet: test_job_queue.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError
from core.quotas import Quotas
from tests.job_defaults import supervised_hyperparameters
from tests.trainer.job_world import add_tenant, queue_job, stale_after
from trainer import files, job_queue, job_records, jobs
from trainer.job_queue import JobLost

CHAT_LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
PREF_LINE = (
    b'{"input": {"messages": [{"role": "user", "content": "hi"}]}, '
    b'"preferred_output": [{"role": "assistant", "content": "hello"}], '
    b'"non_preferred_output": [{"role": "assistant", "content": "go away"}]}\n'
)


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    return sqlite_db


# -----------------------------------------------------------------------------
# creating


def test_create_fills_auto_and_names_the_adapter(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant, hyperparameters={"n_epochs": 3, "lora_rank": 4})
    assert job.status == "queued" and job.attempts == 0 and job.source == "api"
    assert job.id.startswith("ftjob-")
    assert job.adapter_name == "ft-" + job.id.split("-", 1)[1][:8]
    assert job.hyperparameters == supervised_hyperparameters(n_epochs=3, lora_rank=4)
    events, _ = job_records.list_events(db, tenant, job.id)
    assert [e.message for e in events] == [f"Created fine-tuning job: {job.id}"]
    assert events[0].type == "message"


def test_dpo_jobs_take_beta(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant, method="dpo", adapter_name="prefs", hyperparameters={"beta": 0.5})
    assert job.adapter_name == "prefs"
    assert job.hyperparameters["beta"] == 0.5


@pytest.mark.parametrize(
    ("method", "hp", "param"),
    [
        ("supervised", {"n_epochs": 0}, "hyperparameters.n_epochs"),
        ("supervised", {"n_epochs": 51}, "hyperparameters.n_epochs"),
        ("supervised", {"n_epochs": 2.5}, "hyperparameters.n_epochs"),
        ("supervised", {"n_epochs": True}, "hyperparameters.n_epochs"),
        ("supervised", {"n_epochs": "many"}, "hyperparameters.n_epochs"),
        ("supervised", {"batch_size": 257}, "hyperparameters.batch_size"),
        ("supervised", {"learning_rate_multiplier": 0}, "hyperparameters.learning_rate_multiplier"),
        ("supervised", {"learning_rate_multiplier": float("nan")}, "hyperparameters.learning_rate_multiplier"),
        ("supervised", {"lora_rank": 65}, "hyperparameters.lora_rank"),
        ("supervised", {"max_steps": 0}, "hyperparameters.max_steps"),
        ("supervised", {"beta": 0.1}, "hyperparameters.beta"),
        ("supervised", {"warmup": 3}, "hyperparameters.warmup"),
        ("dpo", {"beta": 0}, "hyperparameters.beta"),
        ("dpo", {"beta": 2.5}, "hyperparameters.beta"),
        ("grpo", {}, "method.type"),
        ("reinforcement", {"group_size": 1}, "hyperparameters.group_size"),
        ("reinforcement", {"reasoning_effort": "max"}, "hyperparameters.reasoning_effort"),
        ("reinforcement", {"compute_multiplier": 0}, "hyperparameters.compute_multiplier"),
        ("reinforcement", {"early_stopping": True}, "hyperparameters.early_stopping"),
        ("supervised", {"group_size": 4}, "hyperparameters.group_size"),
        ("dpo", {"max_completion_length": 64}, "hyperparameters.max_completion_length"),
        ("supervised", {"target_modules": []}, "hyperparameters.target_modules"),
        ("supervised", {"target_modules": ["q_proj", "$(id)"]}, "hyperparameters.target_modules"),
        ("supervised", {"max_seq_length": 8}, "hyperparameters.max_seq_length"),
        ("supervised", {"gradient_accumulation_steps": 65}, "hyperparameters.gradient_accumulation_steps"),
        ("supervised", {"packing": "yes"}, "hyperparameters.packing"),
        ("dpo", {"packing": True}, "hyperparameters.packing"),
        ("kto", {"beta": 3}, "hyperparameters.beta"),
    ],
)
def test_bad_hyperparameters_are_400_naming_the_field(method: str, hp: dict[str, object], param: str) -> None:
    with pytest.raises(TailorError) as err:
        jobs.validate_hyperparameters(method, hp)
    assert (err.value.status, err.value.param) == (400, param)


def test_create_job_validates_before_queueing(db: Database, tenant: str) -> None:
    with pytest.raises(TailorError) as err:
        queue_job(db, tenant, hyperparameters={"n_epochs": 0})
    assert err.value.param == "hyperparameters.n_epochs"
    assert jobs.list_jobs(db, tenant) == ([], False)


def test_lora_rank_is_capped_by_the_engines_limit(db: Database, tenant: str) -> None:
    with pytest.raises(TailorError) as err:
        queue_job(db, tenant, hyperparameters={"lora_rank": 32}, max_lora_rank=16)
    assert err.value.param == "hyperparameters.lora_rank"
    assert queue_job(db, tenant, hyperparameters={"lora_rank": 16}, max_lora_rank=16).status == "queued"


def test_bad_suffix_and_seed(db: Database, tenant: str) -> None:
    with pytest.raises(TailorError) as err:
        queue_job(db, tenant, adapter_name="no spaces allowed")
    assert err.value.param == "suffix"
    with pytest.raises(TailorError) as err:
        queue_job(db, tenant, seed=-1)
    assert err.value.param == "seed"


def test_training_files_must_be_the_tenants_and_of_the_methods_kind(db: Database, tenant: str, tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path / "blobs"))
    chat = files.upload_file(db, blobs, tenant, "chat.jsonl", CHAT_LINE * 2, "fine-tune")
    prefs = files.upload_file(db, blobs, tenant, "prefs.jsonl", PREF_LINE, "fine-tune")
    other = add_tenant(db, "globex")
    foreign = files.upload_file(db, blobs, other, "chat.jsonl", CHAT_LINE, "fine-tune")

    assert queue_job(db, tenant, training_file=chat.id).training_file == chat.id
    assert queue_job(db, tenant, method="dpo", training_file=prefs.id).training_file == prefs.id
    for kw, param in [
        ({"training_file": "file-nope"}, "training_file"),
        ({"training_file": foreign.id}, "training_file"),
        ({"training_file": prefs.id}, "training_file"),
        ({"training_file": chat.id, "validation_file": prefs.id}, "validation_file"),
    ]:
        with pytest.raises(TailorError) as err:
            queue_job(db, tenant, **kw)
        assert (err.value.status, err.value.param, err.value.code) == (400, param, "invalid_file")


def test_auto_hyperparameters_resolve_to_concrete_values() -> None:
    from trainer import hyperparameters as hps
    from trainer.compute.recipe import Recipe

    # learning_rate_multiplier=1 means the method's base rate; the compute side's default is the SFT one
    recipe = Recipe(method="sft", base_model_dir="", data_path="", out_dir="", progress_path="", stop_path="")
    assert recipe.learning_rate == hps.BASE_LEARNING_RATE["supervised"]
    assert (recipe.lora_rank, recipe.beta, recipe.max_seq_length) == (8, hps.DEFAULT_BETA, hps.DEFAULT_MAX_SEQ_LENGTH)
    hp = jobs.validate_hyperparameters("supervised", {})
    small = hps.resolve("supervised", hp, 8)
    assert (small.n_epochs, small.batch_size, small.lora_rank, small.lora_alpha) == (13, 4, 8, 16)
    assert small.learning_rate == hps.BASE_LEARNING_RATE["supervised"] and small.max_steps is None
    assert small.beta is None and "beta" not in small.as_dict()
    assert small.target_modules == hps.DEFAULT_TARGET_MODULES and small.packing is False
    big = hps.resolve("supervised", hp, 10_000)
    assert big.n_epochs == 3
    tiny = hps.resolve("supervised", hp, 2)
    assert tiny.batch_size == 2
    dpo = hps.resolve("dpo", {"learning_rate_multiplier": 2, "lora_rank": 4, "max_steps": 7}, 8)
    assert dpo.learning_rate == pytest.approx(2 * hps.BASE_LEARNING_RATE["dpo"])
    assert (dpo.lora_alpha, dpo.max_steps, dpo.beta) == (8, 7, hps.DEFAULT_BETA)
    kto = hps.resolve("kto", {"target_modules": "all-linear", "max_seq_length": 512}, 8)
    assert (kto.beta, kto.target_modules, kto.max_seq_length) == (hps.DEFAULT_BETA, "all-linear", 512)


# -----------------------------------------------------------------------------
# reading


def test_jobs_are_tenant_scoped(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant)
    other = add_tenant(db, "globex")
    for call in (
        lambda: jobs.get_job(db, other, job.id),
        lambda: jobs.cancel_job(db, other, job.id, actor="test"),
        lambda: job_records.list_events(db, other, job.id),
        lambda: job_records.list_checkpoints(db, other, job.id),
        lambda: jobs.get_job(db, tenant, "ftjob-missing"),
    ):
        with pytest.raises(TailorError) as err:
            call()
        assert err.value.status == 404
    assert jobs.list_jobs(db, other) == ([], False)
    assert jobs.get_job(db, None, job.id).id == job.id  # operators and workers see all


def test_list_jobs_pages_newest_first(db: Database, tenant: str) -> None:
    made = [queue_job(db, tenant).id for _ in range(5)]
    first, more = jobs.list_jobs(db, tenant, limit=2)
    assert [j.id for j in first] == made[::-1][:2] and more
    second, more = jobs.list_jobs(db, tenant, after=first[-1].id, limit=2)
    assert [j.id for j in second] == made[::-1][2:4] and more
    last, more = jobs.list_jobs(db, tenant, after=second[-1].id, limit=2)
    assert [j.id for j in last] == made[:1] and not more
    with pytest.raises(TailorError) as err:
        jobs.list_jobs(db, tenant, limit=0)
    assert err.value.param == "limit"


def test_events_newest_first_with_metrics_type(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant)
    for step in (1, 2):
        job_records.add_event(
            db, job.id, f"Step {step}/2: training loss={1 / step:.4f}", data={"step": step, "train_loss": 1 / step}
        )
    job_records.add_event(db, job.id, "Oops", level="warn")
    page, more = job_records.list_events(db, tenant, job.id, limit=2)
    assert [e.message for e in page] == ["Oops", "Step 2/2: training loss=0.5000"] and more
    assert [e.type for e in page] == ["message", "metrics"]
    rest, more = job_records.list_events(db, tenant, job.id, after=page[-1].id)
    assert [e.message for e in rest] == ["Step 1/2: training loss=1.0000", f"Created fine-tuning job: {job.id}"]
    assert not more
    # The report's read: every step event's data, oldest first, prose left out.
    assert [d["step"] for d in job_records.step_data(db, job.id)] == [1, 2]
    with pytest.raises(ValueError):
        job_records.add_event(db, job.id, "x", level="debug")


def test_checkpoints_latest_step_first(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant)
    for step in (5, 10, 15):
        job_records.add_checkpoint(
            db, job.id, step=step, metrics={"step": step, "train_loss": 1 / step}, path=f"checkpoints/x/step-{step}"
        )
    page, more = job_records.list_checkpoints(db, tenant, job.id, limit=2)
    assert [c.step for c in page] == [15, 10] and more
    rest, more = job_records.list_checkpoints(db, tenant, job.id, after=page[-1].id)
    assert [c.step for c in rest] == [5] and not more
    assert rest[0].id.startswith("ftckpt-") and rest[0].path == "checkpoints/x/step-5"


def test_evaluations_are_recorded_per_job(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant)
    with pytest.raises(TailorError) as err:
        job_records.get_evaluation(db, tenant, job.id)
    assert err.value.status == 404
    job_records.record_evaluation(
        db,
        tenant_id=tenant,
        job_id=job.id,
        candidate_version_id="av-1",
        baseline_version_id=None,
        dataset_id="ds-1",
        candidate_metrics={"n": 2, "token_f1": 0.9},
        baseline_metrics={"n": 2, "token_f1": 0.1},
        decision="promoted",
        reasons=["token_f1 better"],
        report_key="reports/t/j/report.json",
    )
    got = job_records.get_evaluation(db, tenant, job.id)
    assert (got.decision, got.candidate_metrics["token_f1"]) == ("promoted", 0.9)
    assert got.reasons == ["token_f1 better"]
    with pytest.raises(TailorError):
        job_records.get_evaluation(db, add_tenant(db, "globex"), job.id)


# -----------------------------------------------------------------------------
# pausing and resuming


def _pause_on_worker(db: Database, job_id: str, worker: str, step: int, total: int) -> jobs.JobInfo:
    saved = job_records.add_checkpoint(db, job_id, step=step, metrics={}, path=f"p/{step}", digest="d" * 64)
    point = jobs.ResumePoint(step=step, total_steps=total, checkpoint_id=saved.id, losses=(2.0, 1.0), trained_tokens=9)
    return job_queue.mark_paused(db, job_id, worker, point)


def test_pause_resume_cycle(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant)
    with pytest.raises(TailorError) as err:
        jobs.pause_job(db, tenant, job.id, actor="test")
    assert (err.value.status, err.value.code) == (400, "job_not_running")
    job_queue.claim_next(db, "w1")
    with pytest.raises(TailorError):
        jobs.pause_job(db, add_tenant(db, "globex"), job.id, actor="test")  # another tenant's: unknown
    asked = jobs.pause_job(db, tenant, job.id, actor="test")
    assert (asked.status, asked.pause_requested) == ("running", True)
    assert job_queue.stop_request(db, job.id, "w1") == "pause"
    with pytest.raises(JobLost):
        job_queue.mark_paused(db, job.id, "w2", None)  # only the worker holding it

    paused = _pause_on_worker(db, job.id, "w1", step=2, total=5)
    assert (paused.status, paused.pause_requested, paused.worker_id, paused.finished_at) == (
        "paused",
        False,
        None,
        None,
    )
    assert paused.resume == jobs.ResumePoint(2, 5, paused.resume.checkpoint_id, (2.0, 1.0), 9)  # type: ignore[union-attr]
    assert paused.resume is not None and paused.resume.remaining_steps == 3
    with pytest.raises(JobLost):  # the worker let go of it
        job_queue.heartbeat(db, job.id, "w1")
    assert job_queue.claim_next(db, "w2") is None  # paused jobs wait for resume

    resumed = jobs.resume_job(db, tenant, job.id, actor="test")
    assert (resumed.status, resumed.attempts, resumed.worker_id) == ("queued", 0, None)
    again = job_queue.claim_next(db, "w2")
    assert again is not None and again.resume is not None and again.resume.step == 2
    assert job_queue.stop_request(db, job.id, "w2") is None
    with pytest.raises(TailorError) as err:
        jobs.resume_job(db, tenant, job.id, actor="test")
    assert (err.value.status, err.value.code) == (400, "job_not_paused")


def test_pause_before_a_checkpoint_keeps_the_earlier_point(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant)
    job_queue.claim_next(db, "w1")
    jobs.pause_job(db, tenant, job.id, actor="test")
    first = _pause_on_worker(db, job.id, "w1", step=2, total=5)
    jobs.resume_job(db, tenant, job.id, actor="test")
    job_queue.claim_next(db, "w1")
    jobs.pause_job(db, tenant, job.id, actor="test")
    # The run stopped before it saved a checkpoint of its own: the earlier one stays the point.
    again = job_queue.mark_paused(db, job.id, "w1", None)
    assert again.status == "paused" and again.resume == first.resume
    events, _ = job_records.list_events(db, tenant, job.id)
    assert events[0].message == "Job paused before any checkpoint; resume trains from the start"


def test_resume_needs_room_in_the_queue(db: Database, tenant: str) -> None:
    job = queue_job(db, tenant)
    job_queue.claim_next(db, "w1")
    jobs.pause_job(db, tenant, job.id, actor="test")
    _pause_on_worker(db, job.id, "w1", step=1, total=3)
    queue_job(db, tenant)
    one = Quotas(max_stored_bytes=10**9, max_adapter_versions=10, max_files=10, max_queued_jobs=1)
    with pytest.raises(TailorError) as err:
        jobs.resume_job(db, tenant, job.id, quotas=one, actor="test")
    assert (err.value.status, err.value.code) == (429, "insufficient_quota")
    assert jobs.get_job(db, tenant, job.id).status == "paused"


def test_stale_job_with_pause_requested_is_paused(db: Database, tenant: str) -> None:
    paused = stale_after(db, tenant, jobs.pause_job)
    assert (paused.status, paused.pause_requested, paused.resume) == ("paused", False, None)


def test_metadata_is_checked_and_filters_the_list(db: Database, tenant: str) -> None:
    a = queue_job(db, tenant, metadata={"team": "geo", "quote's": "it's"})
    b = queue_job(db, tenant, metadata={"team": "geo"})
    c = queue_job(db, tenant)
    assert a.metadata == {"team": "geo", "quote's": "it's"} and c.metadata is None

    def listed(**kw: object) -> list[str]:
        return [j.id for j in jobs.list_jobs(db, tenant, **kw)[0]]  # type: ignore[arg-type]

    assert listed(metadata={"team": "geo"}) == [b.id, a.id]
    assert listed(metadata={"quote's": "it's"}) == [a.id]
    assert listed(without_metadata=True) == [c.id]
    assert listed(metadata={}) == [c.id, b.id, a.id]
    with pytest.raises(TailorError):
        listed(metadata={"team": "geo"}, without_metadata=True)
    for bad in ({"k" * 65: "v"}, {"tailor_x": "v"}, {str(i): "v" for i in range(17)}):
        with pytest.raises(TailorError) as err:
            queue_job(db, tenant, metadata=bad)
        assert err.value.param == "metadata"
