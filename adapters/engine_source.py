"""Adapter files for engines that cannot read Tailor's disks (TAILOR_ENGINE_ADAPTER_SOURCE=url).

Such an engine runs Tailor's vLLM plugin (adapters.vllm_resolver, adapters.adapter_source). Asked for an adapter name
it does not know, it asks a gateway which stored version the name means (`engine_digest`),
then reads that version's files from the gateway under the store's own layout
(`served_file`) and checks each against the version's digest before loading it. Only the
engines' own key opens these reads: it is the secret Tailor already shares with them. A key
opens only its own base's adapters (`engine_key_bases`): whoever runs one base's engines reads
nothing trained for another.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Row, Select, select

from adapters.engines import Engine
from adapters.store import MANIFEST, AdapterStore, check_digest
from core.base_models import job_base_name
from core.db import Database
from core.errors import TailorError, not_found
from core.models import AdapterVersion, Job, JobCheckpoint
from core.states import UNSERVABLE_VERSION_STATES, FinetuningType, VersionKind

# The configured base a stored row's recorded base means (Settings.recorded_base's name).
BaseOf = Callable[[str | None], str]


def engine_key_bases(pools: Mapping[str, Iterable[Engine]], authorization: str | None) -> frozenset[str]:
    """The bases whose engines Tailor sends `authorization` (their key); empty: no engine's."""
    if not authorization:
        return frozenset()
    given = authorization.encode()
    keyed = [
        (base, e.headers["Authorization"].encode())
        for base, engines in pools.items()
        for e in engines
        if e.headers.get("Authorization")
    ]
    # Every key is compared, in constant time, whichever matches.
    return frozenset([base for base, key in keyed if hmac.compare_digest(given, key)])


def engine_digest(db: Database, name: str, bases: frozenset[str], base_of: BaseOf) -> str:
    """The stored files behind an engine-side adapter name: a servable adapter version's id or
    a callable checkpoint's id (adapters.registry names them so) of one of `bases`; 404 for
    anything else."""
    with db.session() as s:
        version = s.get(AdapterVersion, name)
        if version is not None:
            if _servable(version) and base_of(version.base_model) in bases:
                return version.digest
        else:
            row = s.execute(_checkpoints().where(JobCheckpoint.id == name)).first()
            if row is not None and row.digest is not None and _lora_of(row, bases, base_of):
                return str(row.digest)
    raise not_found(f"no adapter {name[:80]!r} for engines", code="adapter_not_found")


def check_engine_reads(db: Database, digest: str, bases: frozenset[str], base_of: BaseOf) -> None:
    """404 unless a servable adapter version or a checkpoint of one of `bases` has these files."""
    with db.session() as s:
        versions = s.scalars(select(AdapterVersion).where(AdapterVersion.digest == digest)).all()
        if any(_servable(v) and base_of(v.base_model) in bases for v in versions):
            return
        rows = s.execute(_checkpoints().where(JobCheckpoint.digest == digest)).all()
        if any(_lora_of(row, bases, base_of) for row in rows):
            return
    raise not_found("no such stored file", code="adapter_not_stored")


def _checkpoints() -> Select[Any]:
    """Checkpoints with their job's config (its base) and hyperparameters (full or LoRA)."""
    return select(JobCheckpoint.digest, Job.config, Job.hyperparameters).join(Job, Job.id == JobCheckpoint.job_id)


def _lora_of(row: Row[Any], bases: frozenset[str], base_of: BaseOf) -> bool:
    """The checkpoint is a LoRA of one of `bases`: a full fine-tune's are whole models, which
    engines never fetch (they run on engines of their own, loaded by path)."""
    full = (row.hyperparameters or {}).get("finetuning_type") == FinetuningType.FULL
    return not full and base_of(job_base_name(row.config)) in bases


def _servable(version: AdapterVersion) -> bool:
    return version.kind == VersionKind.ADAPTER and version.state not in UNSERVABLE_VERSION_STATES


def served_file(store: AdapterStore, prefix: str, digest: str, file_name: str) -> Path:
    """This host's verified copy of one file of a stored version, by the store's layout
    (`<digest[:2]>/<digest>/<file>`); only the version's manifest and the files it lists."""
    check_digest(digest)
    if prefix != digest[:2]:
        raise not_found("no such stored file", code="adapter_not_stored")
    listed = {f.name for f in store.manifest(digest).files}
    if file_name != MANIFEST and file_name not in listed:
        raise not_found("no such stored file", code="adapter_not_stored")
    path = store.local_path(digest) / file_name
    if not path.is_file():
        raise TailorError(500, "a stored adapter's local copy is incomplete", code="adapter_corrupt")
    return path
