"""A dataset of prompts from the interaction log: what the tenant's users asked an adapter.

A retraining policy with a `reward_grader` (trainer.policy) trains with the reinforcement
method on these: the model answers each prompt several times and the grader scores the
answers, so no feedback on the answers is needed. Only chat requests that can be trained on
(trainer.datasets.prompt_from_request: no tools, images or prefill) count, each prompt once,
the most recent `limit` of them.
"""

from __future__ import annotations

from sqlalchemy import select

from core.blobs import BlobStore
from core.db import Database
from core.errors import bad_request
from core.models import Interaction
from trainer.datasets.from_feedback import CHAT_FORM_ENDPOINTS, prompt_from_request
from trainer.datasets.store import store_records
from trainer.records import PromptRecord, Snapshot, prompt_key

MAX_PROMPTS = 2000


def build_from_log(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    model: str,
    *,
    limit: int = MAX_PROMPTS,
    heldout_fraction: float = 0.2,
    min_heldout: int = 1,
) -> Snapshot:
    """Snapshot the prompts of the chat requests the tenant sent to `model` (oldest first)."""
    query = (
        select(Interaction.endpoint, Interaction.request)
        .where(
            Interaction.tenant_id == tenant_id,
            Interaction.model == model,
            Interaction.endpoint.in_(CHAT_FORM_ENDPOINTS),
        )
        .order_by(Interaction.created_at.desc(), Interaction.id.desc())
    )
    found: dict[str, PromptRecord] = {}
    with db.session() as s:
        for endpoint, request in s.execute(query):
            prompt = prompt_from_request(endpoint, request or {})
            if prompt is not None and prompt[-1]["role"] == "user":
                found.setdefault(prompt_key(prompt), PromptRecord(messages=prompt))
            if len(found) >= limit:
                break
    if not found:
        raise bad_request(
            f"No logged chat prompts for model {model!r} to train on with the reward grader.",
            code="no_training_data",
            param="model",
        )
    params = {"source": "log", "model": model, "limit": limit, "heldout_fraction": heldout_fraction}
    return store_records(
        db,
        blobs,
        tenant_id,
        "log",
        params,
        train=list(reversed(found.values())),
        heldout=None,
        heldout_fraction=heldout_fraction,
        min_heldout=min_heldout,
    )
