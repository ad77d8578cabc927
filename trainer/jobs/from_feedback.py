"""Queue a job that trains a tenant's adapter on its feedback: the admin route
(`POST /admin/tenants/{tenant}/train`) and `tailor train --from-feedback` both call it.

The dataset is snapshotted here, before the job is queued, so "no usable feedback" is the
caller's 400 (or the terminal's error) rather than a job that fails later in a worker. Without
a `model` the job trains a fresh LoRA on the base the adapter serves on (its active version's;
the default base for a new name), as the retraining policy does.
"""

from __future__ import annotations

from typing import Any

from core.blobs import BlobStore
from core.config import Settings
from core.db import Database
from core.errors import bad_request
from core.quotas import Quotas
from core.states import FinetuningType
from trainer import job_base
from trainer.jobs.creation import submit
from trainer.jobs.info import JobInfo
from trainer.jobs.methods import feedback_snapshot, training_examples


def submit_from_feedback(
    db: Database,
    blobs: BlobStore,
    settings: Settings,
    tenant_id: str,
    adapter_name: str,
    *,
    actor: str,
    method: str = "supervised",
    model: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    seed: int = 0,
) -> JobInfo:
    """Snapshot the tenant's feedback for `adapter_name` and queue a `method` job training it."""
    if settings.base(adapter_name) is not None:
        raise bad_request(f"adapter_name {adapter_name!r} is the base model's name.", param="adapter_name")
    model = model or job_base.serving_base(settings, db, tenant_id, adapter_name).name
    hp = dict(hyperparameters or {})
    full = hp.get("finetuning_type") == FinetuningType.FULL
    base = job_base.training_base(settings, db, tenant_id, model, method=method, full=full, adapter_name=adapter_name)
    snapshot = feedback_snapshot(db, blobs, tenant_id, adapter_name)
    training_examples(snapshot, method)
    return submit(
        db,
        tenant_id,
        actor=actor,
        method=method,
        model=model,
        adapter_name=adapter_name,
        hyperparameters=hp,
        seed=seed,
        source="feedback",
        dataset_id=snapshot.id,
        max_lora_rank=settings.engine_max_lora_rank,
        quotas=Quotas.from_settings(settings),
        config=job_base.job_config(base, None),
    )
