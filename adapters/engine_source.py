"""Adapter files for engines that cannot read Tailor's disks (TAILOR_ENGINE_ADAPTER_SOURCE=url).

Such an engine runs Tailor's vLLM plugin (adapters.vllm_resolver, adapters.adapter_source). Asked for an adapter name
it does not know, it asks a gateway which stored version the name means (`engine_digest`),
then reads that version's files from the gateway under the store's own layout
(`served_file`) and checks each against the version's digest before loading it. Only the
engines' own key opens these reads: it is the secret Tailor already shares with them.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select

from adapters.engines import Engine
from adapters.store import MANIFEST, AdapterStore, check_digest
from core.db import Database
from core.errors import TailorError, not_found
from core.models import AdapterVersion, JobCheckpoint
from core.states import UNSERVABLE_VERSION_STATES, VersionKind


def is_engine_key(engines: Iterable[Engine], authorization: str | None) -> bool:
    """Whether `authorization` is the header Tailor sends one of these engines (their key)."""
    if not authorization:
        return False
    given = authorization.encode()
    keys = [e.headers["Authorization"].encode() for e in engines if e.headers.get("Authorization")]
    # A list, not a generator: every key is compared, in constant time, whichever matches.
    return any([hmac.compare_digest(given, key) for key in keys])


def engine_digest(db: Database, name: str) -> str:
    """The stored files behind an engine-side adapter name: a servable adapter version's id or
    a callable checkpoint's id (adapters.registry names them so); 404 for anything else."""
    with db.session() as s:
        version = s.get(AdapterVersion, name)
        if version is not None:
            if version.kind == VersionKind.ADAPTER and version.state not in UNSERVABLE_VERSION_STATES:
                return version.digest
        else:
            checkpoint = s.scalar(select(JobCheckpoint).where(JobCheckpoint.id == name))
            if checkpoint is not None and checkpoint.digest is not None:
                return checkpoint.digest
    raise not_found(f"no adapter {name[:80]!r} for engines", code="adapter_not_found")


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
