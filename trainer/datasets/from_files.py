"""A dataset from an uploaded training file (and optional validation file)."""

from __future__ import annotations

from typing import Any

from core.blobs import BlobStore
from core.db import Database
from core.errors import bad_request
from trainer import files
from trainer.datasets.heldout import check_split_params
from trainer.datasets.store import dedup, store_records
from trainer.records import Record, Snapshot


def build_from_files(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    training_file: str,
    validation_file: str | None = None,
    heldout_fraction: float = 0.2,
    min_heldout: int = 1,
) -> Snapshot:
    """Snapshot an uploaded training file; held out: the validation file, else a hash split."""
    check_split_params(heldout_fraction, min_heldout)
    train_info = files.get_file(db, tenant_id, training_file, param="training_file")
    train = dedup(files.read_examples(db, blobs, tenant_id, training_file))
    params: dict[str, Any] = {
        "source": "file",
        "training_file": training_file,
        "training_sha256": train_info.sha256,
        "validation_file": validation_file,
    }
    heldout: list[Record] | None = None
    if validation_file is not None:
        val_info = files.get_file(db, tenant_id, validation_file, param="validation_file")
        if val_info.kind != train_info.kind:
            raise bad_request(
                f"validation_file {validation_file!r} holds {val_info.kind} examples but "
                f"training_file {training_file!r} holds {train_info.kind} examples.",
                code="invalid_file",
                param="validation_file",
            )
        heldout = dedup(files.read_examples(db, blobs, tenant_id, validation_file))
        params["validation_sha256"] = val_info.sha256
    else:
        params.update(heldout_fraction=heldout_fraction, min_heldout=min_heldout)
    return store_records(
        db,
        blobs,
        tenant_id,
        "file",
        params,
        train=train,
        heldout=heldout,
        heldout_fraction=heldout_fraction,
        min_heldout=min_heldout,
    )
