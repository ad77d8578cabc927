"""Storing and loading dataset snapshots.

A snapshot's id is a hash of its content and build parameters, so building twice from the
same data gives the same id, one blob and one `Dataset` row; a job or evaluation that names
a dataset id names exactly the examples it used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy.exc import IntegrityError

from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError, not_found
from core.models import Dataset
from trainer.datasets.heldout import split
from trainer.records import (
    PreferenceRecord,
    PromptRecord,
    RatedRecord,
    Record,
    SFTRecord,
    Snapshot,
    canonical,
    normalise_text,
    prompt_key,
    sorted_records,
)


def dedup(records: Sequence[Record]) -> list[Record]:
    """One of each example (compared normalised), in canonical order; no equal-answer pairs."""
    seen: dict[bytes, Record] = {}
    for r in records:
        if isinstance(r, SFTRecord):
            key = canonical(["sft", [[m["role"], normalise_text(m["content"])] for m in r.messages]])
        elif isinstance(r, RatedRecord):
            key = canonical(["rated", prompt_key(r.prompt), normalise_text(r.completion), r.label])
        elif isinstance(r, PromptRecord):
            key = canonical(["prompt", prompt_key(r.prompt), r.item])
        else:
            if normalise_text(r.chosen) == normalise_text(r.rejected):
                continue
            key = canonical(["pref", prompt_key(r.prompt), normalise_text(r.chosen), normalise_text(r.rejected)])
        seen.setdefault(key, r)
    return sorted_records(list(seen.values()))


def store_records(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    source: str,
    params: dict[str, Any],
    *,
    train: Sequence[Record],
    heldout: Sequence[Record] | None,
    heldout_fraction: float,
    min_heldout: int,
) -> Snapshot:
    """Store `train` and `heldout` as one snapshot, once: its id is the hash of its content.
    With no `heldout`, `train` is split (trainer.datasets.heldout)."""
    if heldout is None:
        train, heldout = split(train, heldout_fraction, min_heldout)

    def parts(records: Sequence[Record], kind: type) -> tuple[Any, ...]:
        return tuple(sorted_records([r for r in records if isinstance(r, kind)]))

    train_sft, train_prefs = parts(train, SFTRecord), parts(train, PreferenceRecord)
    draft = Snapshot(
        id="",
        tenant_id=tenant_id,
        source=source,
        train_sft=train_sft,
        train_preferences=train_prefs,
        heldout_sft=parts(heldout, SFTRecord),
        heldout_preferences=parts(heldout, PreferenceRecord),
        params=params,
        train_ratings=parts(train, RatedRecord),
        heldout_ratings=parts(heldout, RatedRecord),
        train_prompts=parts(train, PromptRecord),
        heldout_prompts=parts(heldout, PromptRecord),
    )
    content = draft.content()
    dataset_id = "ds-" + hashlib.sha256(canonical(content)).hexdigest()[:24]
    snap = replace(draft, id=dataset_id)
    key = storage_key(tenant_id, dataset_id)

    with db.session() as s:
        if s.get(Dataset, dataset_id) is not None:
            return snap  # same content, same id: already stored
    # Blob first, row second: a row never points at a missing or partial blob.
    blobs.put_bytes(key, canonical({"id": dataset_id, **content}))
    try:
        with db.session() as s:
            s.add(
                Dataset(
                    id=dataset_id,
                    tenant_id=tenant_id,
                    source=source,
                    sft_count=len(train_sft),
                    preference_count=len(train_prefs),
                    heldout_count=snap.heldout_count,
                    storage_key=key,
                    params=params,
                )
            )
    except IntegrityError:
        pass  # built concurrently from the same data: the other writer's row is identical
    return snap


def storage_key(tenant_id: str, dataset_id: str) -> str:
    return f"datasets/{tenant_id}/{dataset_id}.json"


def load_snapshot(db: Database, blobs: BlobStore, tenant_id: str, dataset_id: str) -> Snapshot:
    with db.session() as s:
        row = s.get(Dataset, dataset_id)
        if row is None or row.tenant_id != tenant_id:
            raise not_found(f"No dataset {dataset_id!r}.", code="dataset_not_found", param="dataset_id")
        key = row.storage_key
    try:
        data = json.loads(blobs.get_bytes(key))
    except TailorError:
        raise TailorError(
            500, f"Dataset {dataset_id!r} is registered but its snapshot is missing.", code="dataset_missing"
        ) from None

    train, held = data["train"], data["heldout"]
    return Snapshot(
        id=data["id"],
        tenant_id=data["tenant_id"],
        source=data["source"],
        train_sft=tuple(SFTRecord.from_json(r) for r in train["sft"]),
        train_preferences=tuple(PreferenceRecord.from_json(r) for r in train["preferences"]),
        heldout_sft=tuple(SFTRecord.from_json(r) for r in held["sft"]),
        heldout_preferences=tuple(PreferenceRecord.from_json(r) for r in held["preferences"]),
        params=data["params"],
        # Snapshots written before ratings existed have none.
        train_ratings=tuple(RatedRecord.from_json(r) for r in train.get("ratings", [])),
        heldout_ratings=tuple(RatedRecord.from_json(r) for r in held.get("ratings", [])),
        train_prompts=tuple(PromptRecord.from_json(r) for r in train.get("prompts", [])),
        heldout_prompts=tuple(PromptRecord.from_json(r) for r in held.get("prompts", [])),
    )
