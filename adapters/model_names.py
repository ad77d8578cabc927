"""The model names a tenant can call, as `GET /v1/models` lists them.

Exactly what a request's `model` accepts: every base model (core.base_models), each adapter's bare name
while it has an active version (its alias), every servable version pinned as `name@vN`
(candidates, canaries, retired ones: anything not training or failed), and every stored
checkpoint of the tenant's fine-tuning jobs, `name:ftjob-...:ckpt-step-N`
(adapters.checkpoints). Nothing of another tenant. Two queries read a tenant's names,
however many adapters, versions and checkpoints it has.

Names come in a fixed order, the base models first (as configured) and then by adapter name: each alias
before its versions in version order, then that adapter name's checkpoints by job and step,
so that `after` pages through them: a page starts past where the cursor's name sorts, even
if that name was deleted in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, select

from adapters import checkpoints
from adapters.registry import model_not_found
from core.db import Database
from core.errors import bad_request
from core.models import Adapter, AdapterVersion, Job, JobCheckpoint
from core.states import UNSERVABLE_VERSION_STATES

MAX_LIMIT = 1000

Kind = Literal["base", "alias", "version", "checkpoint"]


@dataclass(frozen=True)
class ModelName:
    id: str  # what a request's `model` takes
    kind: Kind
    # None for the base model: it is as old as the serving process, which the gateway knows.
    created: datetime | None = None


@dataclass(frozen=True)
class Page:
    names: list[ModelName]
    has_more: bool


def pinned_name(adapter_name: str, version: int) -> str:
    return f"{adapter_name}@v{version}"


def _rows(tenant_id: str) -> Select[Any]:
    return (
        select(
            Adapter.name,
            Adapter.created_at,
            Adapter.active_version_id,
            AdapterVersion.version,
            AdapterVersion.created_at,
        )
        .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
        .where(Adapter.tenant_id == tenant_id, AdapterVersion.state.not_in(UNSERVABLE_VERSION_STATES))
    )


def _checkpoint_rows(tenant_id: str) -> Select[Any]:
    return (
        select(Job.adapter_name, Job.id, JobCheckpoint.step, JobCheckpoint.created_at)
        .join(JobCheckpoint, JobCheckpoint.job_id == Job.id)
        .where(Job.tenant_id == tenant_id, JobCheckpoint.digest.is_not(None))
    )


def _names(rows: Iterable[Any], checkpoint_rows: Iterable[Any] = ()) -> list[ModelName]:
    """The tenant's names, in order, from (adapter name, created, active version id, version,
    created) rows and (adapter name, job id, step, created) checkpoint rows."""
    names: list[ModelName] = []
    aliased: set[str] = set()
    for name, adapter_created, active_id, version, version_created in rows:
        if active_id is not None and name not in aliased:
            aliased.add(name)
            names.append(ModelName(id=name, kind="alias", created=adapter_created))
        names.append(ModelName(id=pinned_name(name, version), kind="version", created=version_created))
    # A step saved again by a later attempt of its job is one name (the newest files serve it).
    saved: dict[str, datetime] = {}
    for adapter_name, job_id, step, created in checkpoint_rows:
        model = checkpoints.checkpoint_model(adapter_name, job_id, step)
        saved[model] = max(created, saved.get(model, created))
    names += [ModelName(id=model, kind="checkpoint", created=created) for model, created in saved.items()]
    return sorted(names, key=lambda n: sort_key(n.id, bases=()))


def sort_key(model: str, *, bases: Sequence[str]) -> tuple[int, str, int, int | str, int]:
    """Where `model` sorts in a listing: the base models first, in their configured order, then
    by adapter name its alias, its versions `name@vN` by N, its checkpoints by job and step.
    Any string has a place, so any string works as a cursor."""
    if model in bases:
        return (0, "", 0, bases.index(model), 0)
    checkpoint = checkpoints.parse(model)
    if checkpoint is not None:
        return (1, checkpoint.adapter_name, 2, checkpoint.job_id, checkpoint.step)
    name, sep, pinned = model.partition("@v")
    if sep and pinned.isascii() and pinned.isdigit():
        return (1, name, 1, int(pinned), 0)
    return (1, model, 0, 0, 0)


def list_names(db: Database, tenant_id: str, *, bases: Sequence[str]) -> list[ModelName]:
    """Every name the tenant can call, in listing order."""
    with db.session() as s:
        rows = s.execute(_rows(tenant_id)).all()
        checkpoint_rows = s.execute(_checkpoint_rows(tenant_id)).all()
    return [*(ModelName(id=base, kind="base") for base in bases), *_names(rows, checkpoint_rows)]


def find_name(db: Database, tenant_id: str, model: str, *, bases: Sequence[str]) -> ModelName:
    """`model` if the tenant can call it; 404 `model_not_found` (the same for another tenant's names)."""
    if model in bases:
        return ModelName(id=model, kind="base")
    checkpoint = checkpoints.parse(model)
    rows: list[Any] = []
    checkpoint_rows: list[Any] = []
    with db.session() as s:
        if checkpoint is None:
            rows = list(s.execute(_rows(tenant_id).where(Adapter.name == model.partition("@v")[0])))
        else:
            one = _checkpoint_rows(tenant_id).where(
                Job.id == checkpoint.job_id,
                Job.adapter_name == checkpoint.adapter_name,
                JobCheckpoint.step == checkpoint.step,
            )
            checkpoint_rows = list(s.execute(one))
    found = next((n for n in _names(rows, checkpoint_rows) if n.id == model), None)
    if found is None:
        raise model_not_found(model)
    return found


def page(names: list[ModelName], *, after: str | None, limit: int | None, bases: Sequence[str]) -> Page:
    """The names past `after` (a name from an earlier page), at most `limit` of them (None: all)."""
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"limit must be between 1 and {MAX_LIMIT}.", param="limit")
    if after:
        cursor = sort_key(after, bases=bases)
        names = [n for n in names if sort_key(n.id, bases=bases) > cursor]
    if limit is None:
        return Page(names=names, has_more=False)
    return Page(names=names[:limit], has_more=len(names) > limit)
