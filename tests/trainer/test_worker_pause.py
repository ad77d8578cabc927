"""trainer.worker: a real (tiny) job paused mid-training and resumed, finishing from its checkpoint.

The job trains SmolLM2 on the odd fact of tests/trainer/worker_world.py for 16 steps; a pause
asked for at step 2 stops the run a step or more later (the worker looks every 2 s) with a
checkpoint there, and the worker lets go of the job. Resumed, the next claim trains the
remaining steps from that checkpoint: the job's steps run 1..24 once each, the first step
after the pause starts from the learned weights, and the version, report and token count
cover the whole run. Evaluation and gates have their own tests; here they pass at no cost,
so no engine is needed. Needs models/SmolLM2-135M-Instruct; skipped without it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import trainer.worker.evaluating as evaluating
import trainer.worker.selecting as selecting
from core.db import Database
from tests.trainer.worker_world import HYPER, NEEDS_MODEL, Env
from trainer import job_records, jobs
from trainer.evaluate import Comparison, Metrics
from trainer.gates import Decision

pytestmark = NEEDS_MODEL

STEPS = 16


def test_paused_job_resumes_from_its_checkpoint_and_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics(n=2, exact_match=1.0, token_f1=1.0, perplexity=1.5, win_rate=None)
    monkeypatch.setattr(evaluating, "evaluate", lambda *_a: Comparison(metrics, metrics, []))
    monkeypatch.setattr(selecting, "decide", lambda *_a: Decision(promote=True, reasons=["forced"]))
    env = Env(tmp_path, SimpleNamespace(url="http://127.0.0.1:9", key="unused"))  # type: ignore[arg-type]
    job = env.job(hyperparameters={**HYPER, "max_steps": STEPS})
    real_add_event = job_records.add_event
    asked: list[str] = []

    def pause_at_step_2(db: Database, job_id: str, message: str, **kw: object) -> job_records.EventInfo:
        event = real_add_event(db, job_id, message, **kw)  # type: ignore[arg-type]
        if message.startswith("Step 2/") and not asked:
            asked.append(job_id)
            jobs.pause_job(db, env.tenant, job_id, actor="test")
        return event

    monkeypatch.setattr(job_records, "add_event", pause_at_step_2)
    assert env.worker.run_once()
    paused = jobs.get_job(env.db, env.tenant, job.id)
    assert paused.status == "paused" and paused.worker_id is None and env.versions() == []
    point = paused.resume
    assert point is not None and 2 <= point.step < STEPS and point.total_steps == STEPS
    assert len(point.losses) == point.step and point.trained_tokens > 0
    saved = job_records.get_checkpoint(env.db, job.id, point.checkpoint_id or "")
    assert saved.step == point.step and saved.digest and env.store.exists(saved.digest)
    first_run = [e for e in env.events(job.id) if e.type == "metrics"]
    assert [e.data["step"] for e in first_run] == list(range(1, point.step + 1))  # type: ignore[index]
    assert env.events(job.id)[-1].message == (
        f"Job paused after step {point.step} of {STEPS}; resume continues from its checkpoint"
    )
    assert not (env.settings.data_dir / "jobs" / job.id).exists()
    assert env.worker.run_once() is False  # nothing queued while it is paused

    jobs.resume_job(env.db, env.tenant, job.id, actor="test")
    assert env.worker.run_once()
    done = jobs.get_job(env.db, env.tenant, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == "geo@v1" and done.attempts == 1

    events = env.events(job.id)
    steps = [e.data for e in events if e.type == "metrics"]
    assert [d["step"] for d in steps] == list(range(1, STEPS + 1))  # type: ignore[index]
    assert all(d["total_steps"] == STEPS for d in steps)  # type: ignore[index]
    resumed = f"Resuming from the checkpoint of step {point.step} of {STEPS}: {STEPS - point.step} step(s) left"
    assert resumed in [e.message for e in events]
    # The first step after the pause starts from the learned weights (loss measured before
    # its update), not from a fresh adapter: far below the job's first loss.
    losses = [d["train_loss"] for d in steps]  # type: ignore[index]
    assert losses[point.step] < 0.5 * losses[0], losses
    # The learning rate goes on where the linear decay was (warmup 0), not from the top.
    rate = [d["learning_rate"] for d in steps]  # type: ignore[index]
    assert rate[point.step] == pytest.approx(rate[0] * (STEPS - point.step) / STEPS, rel=1e-3)

    finished = next(e for e in events if e.message.startswith("Training finished"))
    assert finished.message.startswith(f"Training finished: {STEPS} steps")
    (version,) = env.versions()
    assert version.metrics is not None and version.metrics["steps"] == STEPS
    assert done.trained_tokens is not None and done.trained_tokens > point.trained_tokens
    report = json.loads(env.blobs.get_bytes(f"reports/{env.tenant}/{job.id}/report.json"))
    assert report["training"]["steps"] == STEPS and report["training"]["losses"][: point.step] == list(point.losses)
    checkpoints = [c.step for c in job_records.list_checkpoints(env.db, env.tenant, job.id, limit=100)[0]]
    assert checkpoints == sorted({point.step, 6, 12, STEPS}, reverse=True)  # every ceil(16 / 3) steps
    started = [e.message for e in events if re.match(r"Job started on worker .* \(attempt 1\)", e.message)]
    assert len(started) == 2
