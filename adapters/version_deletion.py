"""Deleting one fine-tuned model, a pinned version `name@vN`, of a tenant's adapter.

A version goes only while nothing routes to it: the version its name serves and a running
canary are refused with a 400 that says what to do first. The bare name (the alias) is
refused too: deleting it would delete the adapter with every version, which is
`DELETE /v1/adapters/{name}`, named in the refusal. The checks and the delete run on the
adapter's locked row (adapters.activation), so a promotion or canary cannot pick the
version in between.

What goes: the version row, then its files in the store unless another version or a job's
checkpoint (of any tenant: the store is content-addressed) has the same digest. What stays:
interactions, feedback, jobs and evaluations naming the version's id (history, not
routing), and the adapter name itself, even with no versions left. Unloading it from
engines is the caller's (the gateway's engine pool), after this returns. A job's checkpoint
(`name:ftjob-...:ckpt-step-N`) is refused: it lives as long as its job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from adapters import checkpoints, registry
from adapters.activation import lock_adapter
from adapters.audit_log import describe_version, record_change
from adapters.registry import (
    VersionInfo,
    adapter_info,
    model_not_found,
    route,
    version_info,
)
from adapters.store import AdapterStore
from core.db import Database
from core.errors import bad_request
from core.models import Adapter, AdapterVersion, JobCheckpoint
from core.states import UNSERVABLE_VERSION_STATES

log = logging.getLogger("tailor.adapters")


@dataclass(frozen=True)
class DeletedVersion:
    model: str  # the public name, `name@vN`
    adapter_name: str
    version: VersionInfo


def delete_version(
    db: Database, store: AdapterStore, tenant_id: str, model: str, *, bases: Sequence[str], actor: str
) -> DeletedVersion:
    """Delete the tenant's version `model` (`name@vN`) and record `adapter.version.delete` by
    `actor` in the same transaction; 404 `model_not_found` for any name the tenant cannot
    call (another tenant's included), 400 for the base model, an alias, the active version
    or a canary."""
    if model in bases:
        raise bad_request(
            f"`{model}` is the base model and cannot be deleted; only fine-tuned models (`name@vN`) can.",
            code="cannot_delete_base_model",
            param="model",
        )
    if checkpoints.parse(model) is not None:
        route(db, tenant_id, model, bases[0])  # 404 for a checkpoint the tenant cannot call
        raise bad_request(
            f"`{model}` is a checkpoint of a fine-tuning job, kept with its job; checkpoints cannot be "
            "deleted one by one.",
            code="cannot_delete_checkpoint",
            param="model",
        )
    name, sep, pinned = model.partition("@v")
    with db.session() as s:
        adapter = lock_adapter(s, tenant_id, name)
        if adapter is None:
            raise model_not_found(model)
        if not sep:
            _refuse_alias(adapter, model)
        target = next(
            (v for v in adapter.versions if str(v.version) == pinned and v.state not in UNSERVABLE_VERSION_STATES), None
        )
        if target is None:
            raise model_not_found(model)
        _refuse_routed(adapter, target, model)
        before, deleted = adapter_info(adapter), version_info(adapter, target)
        s.delete(target)
        s.flush()
        s.expire(adapter, ["versions"])
        record_change(
            s,
            actor=actor,
            action="adapter.version.delete",
            tenant_id=tenant_id,
            name=name,
            before=before,
            after=adapter_info(adapter),
            version=describe_version(deleted),
        )
    _remove_files(db, store, deleted.digest)
    return DeletedVersion(model=model, adapter_name=name, version=deleted)


def delete_adapter(db: Database, store: AdapterStore, tenant_id: str, name: str, *, actor: str) -> list[VersionInfo]:
    """Delete the tenant's adapter `name` with every version (404 for names not the tenant's),
    audited as `adapter.delete` by `actor`, and each version's store files no other version
    or checkpoint shares. Unloading the returned versions from engines is the caller's, as
    for one version."""
    deleted = registry.delete_adapter(db, tenant_id, name, actor=actor)
    for digest in sorted({v.digest for v in deleted}):
        _remove_files(db, store, digest)
    return deleted


def _refuse_alias(adapter: Adapter, model: str) -> None:
    if adapter.active_version_id is None:
        raise model_not_found(model)  # not a name the tenant can call, so not one it can delete
    raise bad_request(
        f"`{model}` is an alias for the version it serves, not a fine-tuned model of its own. "
        f"Delete one version with DELETE /v1/models/{model}@vN, or the adapter with all its "
        f"versions with DELETE /v1/adapters/{model}.",
        code="cannot_delete_alias",
        param="model",
    )


def _refuse_routed(adapter: Adapter, target: AdapterVersion, model: str) -> None:
    name = adapter.name
    if target.id == adapter.active_version_id:
        raise bad_request(
            f"`{model}` is the active version of `{name}`. Promote another version first "
            f"(POST /v1/adapters/{name}/activate or /rollback), or delete the adapter with all its "
            f"versions (DELETE /v1/adapters/{name}).",
            code="model_version_active",
            param="model",
        )
    if target.id == adapter.canary_version_id:
        raise bad_request(
            f"`{model}` is the canary of `{name}`. Stop the canary first (DELETE /v1/adapters/{name}/canary).",
            code="model_version_in_canary",
            param="model",
        )


def _remove_files(db: Database, store: AdapterStore, digest: str) -> None:
    # Asked after the commit, so a version of the same bytes registered meanwhile is seen.
    # A job's checkpoint may hold the same bytes (its last step is the version it registered).
    with db.session() as s:
        if s.scalar(select(AdapterVersion.id).where(AdapterVersion.digest == digest).limit(1)) is not None:
            return
        if s.scalar(select(JobCheckpoint.id).where(JobCheckpoint.digest == digest).limit(1)) is not None:
            return
    try:
        store.delete(digest)
    except OSError:
        # The row is gone and the version no longer callable; the files are only bytes now.
        log.warning("deleted version's files %s could not be removed from the store", digest, exc_info=True)
