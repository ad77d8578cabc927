"""A dataset from generated examples: a teacher's answers (distillation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.blobs import BlobStore
from core.db import Database
from trainer.datasets.heldout import check_split_params
from trainer.datasets.store import dedup, store_records
from trainer.records import SFTRecord, Snapshot


def build_from_answers(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    records: Sequence[SFTRecord],
    params: dict[str, Any],
    *,
    heldout: Sequence[SFTRecord] | None = None,
    heldout_fraction: float = 0.2,
    min_heldout: int = 1,
) -> Snapshot:
    """Snapshot generated examples (a teacher's answers); held out: `heldout`, else a hash split."""
    check_split_params(heldout_fraction, min_heldout)
    return store_records(
        db,
        blobs,
        tenant_id,
        "distillation",
        params,
        train=dedup(records),
        heldout=None if heldout is None else dedup(heldout),
        heldout_fraction=heldout_fraction,
        min_heldout=min_heldout,
    )
