"""The training methods a job may name, the file kind each trains on, and what of a
dataset each learns from."""

from __future__ import annotations

from typing import Any

from adapters import promotion
from core.blobs import BlobStore
from core.db import Database
from core.errors import bad_request
from trainer import datasets, hyperparameters
from trainer.records import Snapshot

# distillation trains like supervised, on a teacher's answers (trainer.distill);
# reinforcement samples answers and learns from its grader's scores (trainer.compute.grpo).
REINFORCEMENT = hyperparameters.REINFORCEMENT
METHODS = ("supervised", "dpo", "kto", "distillation", REINFORCEMENT)
# Not a training method: an adapter merged into its base (trainer.merge), queued as a job so
# that workers claim it like training; no fine-tuning route shows such a job.
MERGE = "merge"
SFT_METHODS = hyperparameters.SFT_METHODS

# Which file kind (core.models.StoredFile.kind) each method trains on.
FILE_KIND = {
    "supervised": "sft",
    "dpo": "preference",
    "kto": "rated",
    "distillation": "prompts",
    "reinforcement": "prompts",
}


def validate_hyperparameters(
    method: str, given: dict[str, Any] | None, *, max_lora_rank: int = hyperparameters.MAX_LORA_RANK
) -> dict[str, Any]:
    """The method must be one Tailor trains with; then trainer.hyperparameters.validate."""
    if method not in METHODS:
        raise bad_request(
            f"Unsupported fine-tuning method {method!r}; use one of {', '.join(METHODS)}.", param="method.type"
        )
    return hyperparameters.validate(method, given, max_lora_rank=max_lora_rank)


def feedback_snapshot(db: Database, blobs: BlobStore, tenant_id: str, adapter_name: str) -> Snapshot:
    """The dataset a feedback-driven job for `adapter_name` trains on.

    Once the name serves, the feedback on its own answers (plus imported examples); before
    that, everything the tenant said, since no answer of this adapter exists yet.
    """
    served = promotion.active_version(db, tenant_id, adapter_name) is not None
    model = adapter_name if served else None
    return datasets.build_from_feedback(db, blobs, tenant_id, model=model)


def training_examples(snapshot: Snapshot, method: str) -> int:
    """How many examples of `snapshot` the method trains on; a 400 when there are none."""
    if method in SFT_METHODS:
        n, what = len(snapshot.train_sft), "chat examples"
    elif method == "kto":
        n, what = len(snapshot.train_ratings), "rated answers"
    elif method == REINFORCEMENT:
        n, what = len(snapshot.train_prompts), "prompts"
    else:
        n, what = len(snapshot.train_preferences), "preference pairs"
    if n == 0:
        raise bad_request(
            f"Dataset {snapshot.id} has no {what} to train the {method} method on.", code="no_training_data"
        )
    return n
