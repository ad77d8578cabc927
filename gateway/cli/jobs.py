"""`tailor train`: queue a fine-tuning job on a tenant's feedback, or run it at once (--wait)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from typing import Annotated

import typer

from core.config import Settings
from core.errors import TailorError
from gateway.cli.common import JsonOpt, emit, fail, open_db


def run_job_now(job_id: str) -> None:
    """Run a queued job in a trainer worker process of its own (`python -m trainer.worker
    --job`): the gateway's code never imports the trainer's compute side."""
    subprocess.run([sys.executable, "-m", "trainer.worker", "--job", job_id], check=False)


def train_cmd(
    tenant: str,
    adapter: Annotated[str, typer.Option(help="Adapter name the result is registered under.")] = "default",
    from_feedback: Annotated[
        bool, typer.Option("--from-feedback", help="Build the dataset from the tenant's feedback.")
    ] = False,
    method: Annotated[str, typer.Option(help="supervised, dpo or kto (thumbs up and down).")] = "supervised",
    max_steps: Annotated[int | None, typer.Option(help="Cap on optimizer steps.")] = None,
    wait: Annotated[bool, typer.Option(help="Run the job in this process instead of queueing it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue a fine-tuning job from a tenant's feedback: dataset snapshot, training,
    evaluation against the current adapter, and promotion if the gates and policy allow."""
    from gateway import audit, tenants
    from trainer import jobs

    if not from_feedback:
        typer.echo(
            "error: only --from-feedback jobs start here; upload a file and use the fine-tuning API "
            "for file-based jobs",
            err=True,
        )
        raise typer.Exit(2)
    settings = Settings()
    db = open_db()
    hyper = {"max_steps": max_steps} if max_steps else {}
    try:
        from core.blobs import BlobStore

        owner = tenants.find_tenant(db, tenant)
        # The dataset is snapshotted as the job is queued: "no usable feedback" is an answer for
        # the person at the terminal, not a job that fails later in a worker.
        job = jobs.submit_from_feedback(
            db,
            BlobStore.from_settings(settings),
            settings,
            owner.id,
            adapter,
            actor=audit.actor_for_cli(),
            method=method,
            hyperparameters=hyper,
        )
    except TailorError as exc:
        fail(exc)
    if wait:
        run_job_now(job.id)
        job = jobs.get_job(db, owner.id, job.id)
    emit(
        asdict(job),
        as_json,
        f"job {job.id}: {job.status}"
        + (f" -> {job.fine_tuned_model} ({job.decision})" if job.fine_tuned_model else ""),
    )
