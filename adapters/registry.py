"""Adapter registry: a tenant's adapter names, their immutable versions, and name resolution.

Registering is write-then-commit: files are validated and complete in the store before the
version row exists, so a row always points at a loadable adapter.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from adapters import checkpoints
from adapters.activation import lock_adapter, serve
from adapters.archives import extract_archive
from adapters.audit_log import describe_version, record_change
from adapters.store import AdapterStore
from adapters.validation import BaseModelSpec, validate_adapter_name
from adapters.version_files import VersionFiles, validate_version_dir
from core.base_models import BaseModelConfig, job_base_name
from core.config import Settings
from core.db import Database
from core.errors import TailorError, bad_request, not_found
from core.ids import new_id
from core.models import Adapter, AdapterVersion, Job, JobCheckpoint
from core.quotas import Quotas, Usage, operator_quotas, precheck, reserve
from core.rows import from_row
from core.states import UNSERVABLE_VERSION_STATES, FinetuningType, VersionKind, VersionState


@dataclass(frozen=True)
class ValidationLimits:
    base: BaseModelSpec
    max_rank: int
    max_bytes: int
    # What a tenant may keep; None: the defaults of the process's settings.
    quotas: Quotas | None = None
    max_model_bytes: int = 20_000_000_000  # a full-model version (a complete checkpoint)
    # The configured base (core.base_models) an adapter is recorded for; None: `base`'s name.
    base_name: str | None = None
    # Every configured base's name: no adapter may take one.
    base_names: frozenset[str] = frozenset()
    # What the other configured bases are called (names, checkpoint directories): an adapter
    # whose config names one of them was made for that base, not this one.
    other_bases: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings, base: BaseModelConfig | None = None) -> ValidationLimits:
        """The limits of adapters for `base` (default: the default base)."""
        base = base or settings.bases[0]
        return cls(
            base=base_spec(base),
            max_rank=settings.engine_max_lora_rank,
            max_bytes=settings.max_adapter_bytes,
            quotas=Quotas.from_settings(settings),
            max_model_bytes=settings.max_model_bytes,
            base_name=base.name,
            base_names=frozenset(b.name for b in settings.bases),
            other_bases=frozenset().union(*(_called(b) for b in settings.bases)) - _called(base),
        )


def _called(base: BaseModelConfig) -> frozenset[str]:
    """The names an adapter's base_model_name_or_path may know `base` by."""
    return frozenset({base.name, *([base.path.resolve().name] if base.path else [])})


def base_spec(base: BaseModelConfig) -> BaseModelSpec:
    """What adapters for `base` must fit, from its checkpoint's config.json."""
    if base.path is None:
        raise bad_request(
            f"Base model {base.name!r} is served by engine URLs only; no adapter can be checked against it "
            '(give it a "path" in TAILOR_BASE_MODELS).',
            code="base_model_without_config",
            param="base_model",
        )
    return BaseModelSpec.from_config_dir(base.path)


def choose_base(settings: Settings, name: str | None) -> BaseModelConfig:
    """The base an adapter is registered for: the one named, or the default; 400
    `unknown_base_model` for a name no base has (never read as a path or a URL)."""
    if name is None:
        return settings.bases[0]
    base = settings.base(name)
    if base is None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise bad_request(
            f"Unknown base model {shown!r}; GET /v1/models lists the base models.",
            code="unknown_base_model",
            param="base_model",
        )
    return base


@dataclass(frozen=True)
class VersionInfo:
    id: str
    adapter_name: str
    version: int
    digest: str
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    state: VersionState
    source: str
    active: bool
    created_at: datetime
    kind: VersionKind = VersionKind.ADAPTER
    # An adapter's base model as registered (a configured base's name, or for rows from before
    # several bases its checkpoint directory's); a full model's architecture.
    base_model: str = ""


@dataclass(frozen=True)
class AdapterInfo:
    id: str
    tenant_id: str
    name: str
    active_version: int | None
    versions: list[VersionInfo]
    created_at: datetime
    canary_version: int | None = None
    canary_fraction: float = 0.0


@dataclass(frozen=True)
class ResolvedModel:
    """What a request's `model` means for one tenant. `version_id` None is the base model;
    else the id of the adapter version, or of the job checkpoint (adapters.checkpoints),
    whose files (`digest`) serve it; engines know the adapter by that id."""

    public_name: str
    version_id: str | None = None
    digest: str | None = None
    created_at: datetime | None = None
    # A full model is served by engines of its own (adapters.dedicated), not on the base's.
    kind: VersionKind = VersionKind.ADAPTER
    # The base model it runs on, as its version recorded it; None or a name no base has
    # (rows from before several bases): the default base.
    base: str | None = None

    @property
    def is_base(self) -> bool:
        return self.version_id is None


def model_not_found(name: str) -> TailorError:
    # Same words for unknown and foreign names: a tenant cannot probe what others own.
    return not_found(
        f"The model `{name}` does not exist or you do not have access to it.", code="model_not_found", param="model"
    )


def version_info(adapter: Adapter, v: AdapterVersion) -> VersionInfo:
    return from_row(
        VersionInfo,
        v,
        adapter_name=adapter.name,
        target_modules=list(v.target_modules),
        state=VersionState(v.state),
        active=adapter.active_version_id == v.id,
        kind=version_kind(v),
    )


def version_kind(v: AdapterVersion) -> VersionKind:
    # Rows written before versions had a kind hold none: they are all adapters.
    return VersionKind(v.kind or VersionKind.ADAPTER)


def adapter_info(a: Adapter) -> AdapterInfo:
    active = next((v.version for v in a.versions if v.id == a.active_version_id), None)
    canary = next((v.version for v in a.versions if v.id == a.canary_version_id), None)
    return from_row(
        AdapterInfo,
        a,
        active_version=active,
        versions=[version_info(a, v) for v in a.versions],
        canary_version=canary,
        canary_fraction=a.canary_fraction if canary else 0.0,
    )


@dataclass(frozen=True)
class Lineage:
    job_id: str | None = None
    dataset_id: str | None = None
    parent_version_id: str | None = None
    metrics: dict[str, object] | None = None


def register_dir(
    db: Database,
    store: AdapterStore,
    limits: ValidationLimits,
    *,
    tenant_id: str,
    name: str,
    source_dir: Path,
    base_model_name: str,
    actor: str,
    action: str = "adapter.register",
    source: str = "upload",
    activate: bool = True,
    state: VersionState | None = None,
    lineage: Lineage | None = None,
) -> VersionInfo:
    """Validate a PEFT adapter or full model directory, store it, and record it as the next version of `name`.

    `activate` makes it what `name` serves at once (uploads, operator registrations), the
    way a promotion does (adapters.activation.serve: a running canary ends too); trained
    versions arrive with activate=False and state "candidate" and are promoted by the gates.
    The audit event (`action`, by `actor`: "adapter.upload" for uploads) is written with
    the version row, in one transaction.
    """
    lineage = lineage or Lineage()
    validate_adapter_name(name)
    if name == base_model_name or name in limits.base_names:
        raise bad_request(f"Adapter name {name!r} is the base model's name.", param="name")
    manifest = validate_version_dir(
        source_dir,
        base=limits.base,
        max_rank=limits.max_rank,
        max_bytes=limits.max_bytes,
        max_model_bytes=limits.max_model_bytes,
        other_bases=limits.other_bases,
    )
    quotas, adding = operator_quotas(limits.quotas), Usage(stored_bytes=manifest.total_bytes, adapter_versions=1)
    # Before the store write, so a refused version leaves no files behind; checked again
    # under the tenant's lock below, where a concurrent registration may have used the room.
    precheck(db, tenant_id, quotas, adding)
    digest = store.put_dir(source_dir)
    for _attempt in range(3):
        try:
            with db.session() as s:
                reserve(s, tenant_id, quotas, adding)
                # Locked: an activating registration switches what the name serves, and takes
                # its turn with promotions and rollbacks (adapters.activation).
                adapter = lock_adapter(s, tenant_id, name)
                before = adapter_info(adapter) if adapter is not None else None
                if adapter is None:
                    adapter = Adapter(id=new_id("ad"), tenant_id=tenant_id, name=name)
                    s.add(adapter)
                    s.flush()
                latest = s.scalar(
                    select(func.max(AdapterVersion.version)).where(AdapterVersion.adapter_id == adapter.id)
                )
                # Past every number given before, deleted versions' included (adapters.version_deletion).
                adapter.last_version = max(latest or 0, adapter.last_version or 0) + 1
                row = AdapterVersion(
                    id=new_id("av"),
                    adapter_id=adapter.id,
                    version=adapter.last_version,
                    digest=digest,
                    rank=manifest.rank,
                    alpha=float(manifest.alpha),
                    target_modules=list(manifest.target_modules),
                    base_model=recorded_base(manifest, limits),
                    kind=manifest.kind,
                    size_bytes=manifest.total_bytes,
                    state=VersionState.ACTIVE if activate else (state or VersionState.REGISTERED),
                    source=source,
                    job_id=lineage.job_id,
                    dataset_id=lineage.dataset_id,
                    parent_version_id=lineage.parent_version_id,
                    metrics=lineage.metrics,
                )
                s.add(row)
                s.flush()
                # Read again: the list loaded for `before` does not hold the new row.
                s.expire(adapter, ["versions"])
                if activate:
                    serve(adapter, row, by=None)
                    s.flush()
                registered = version_info(adapter, row)
                record_change(
                    s,
                    actor=actor,
                    action=action,
                    tenant_id=tenant_id,
                    name=name,
                    before=before,
                    after=adapter_info(adapter),
                    version=describe_version(registered),
                )
                return registered
        except IntegrityError:
            # Two registrations raced for the same version number; take the next one.
            continue
    raise TailorError(409, f"Could not register a new version of {name!r}; try again.", code="conflict")


def register_archive(
    db: Database,
    store: AdapterStore,
    limits: ValidationLimits,
    *,
    tenant_id: str,
    name: str,
    archive: Path,
    base_model_name: str,
    max_upload_bytes: int,
    actor: str,
    action: str = "adapter.register",
    activate: bool = True,
) -> VersionInfo:
    """register_dir for a .zip or .tar.gz archive of an adapter directory."""
    with tempfile.TemporaryDirectory(prefix="tailor-upload-") as tmp:
        # A full model unpacks to more than an adapter; each kind's own limit applies after.
        budget = max(max_upload_bytes, limits.max_model_bytes)
        adapter_dir = extract_archive(archive, Path(tmp) / "x", max_bytes=budget)
        return register_dir(
            db,
            store,
            limits,
            tenant_id=tenant_id,
            name=name,
            source_dir=adapter_dir,
            base_model_name=base_model_name,
            actor=actor,
            action=action,
            source="upload",
            activate=activate,
        )


def recorded_base(manifest: VersionFiles, limits: ValidationLimits) -> str:
    """What a version row records as its base: an adapter's configured base (the pool it
    serves on), a full model's architecture."""
    if manifest.kind == VersionKind.ADAPTER and limits.base_name:
        return limits.base_name
    return manifest.base_model


@dataclass(frozen=True)
class ModelRoute:
    """Where one of a tenant's model names sends traffic: its active version, plus an
    optional canary that takes `canary_fraction` of the requests."""

    primary: ResolvedModel
    canary: ResolvedModel | None = None
    canary_fraction: float = 0.0

    def choose(self, draw: float) -> ResolvedModel:
        if self.canary is not None and draw < self.canary_fraction:
            return self.canary
        return self.primary


def route(db: Database, tenant_id: str, model: str, base_model_name: str) -> ModelRoute:
    """Resolve a request's `model`: the base model, `name` (alias, maybe canaried), `name@vN`
    or a job's checkpoint `name:ftjob-...:ckpt-step-N`."""
    if model == base_model_name:
        return ModelRoute(primary=ResolvedModel(public_name=model))
    checkpoint = checkpoints.parse(model)
    if checkpoint is not None:
        return ModelRoute(primary=_checkpoint(db, tenant_id, model, checkpoint))
    name, _, pinned = model.partition("@v")
    with db.session() as s:
        adapter = s.scalar(select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name))
        if adapter is None:
            raise model_not_found(model)
        by_id = {v.id: v for v in adapter.versions}
        if pinned:
            version = next((v for v in adapter.versions if str(v.version) == pinned), None)
            if version is None or version.state in UNSERVABLE_VERSION_STATES:
                raise model_not_found(model)
            return ModelRoute(primary=_resolved(model, version))
        active = by_id.get(adapter.active_version_id or "")
        if active is None:
            raise model_not_found(model)
        canary = by_id.get(adapter.canary_version_id or "")
        if canary is None or canary.state in UNSERVABLE_VERSION_STATES or adapter.canary_fraction <= 0:
            return ModelRoute(primary=_resolved(model, active))
        return ModelRoute(
            primary=_resolved(model, active), canary=_resolved(model, canary), canary_fraction=adapter.canary_fraction
        )


def _checkpoint(db: Database, tenant_id: str, model: str, name: checkpoints.CheckpointName) -> ResolvedModel:
    query = (
        select(JobCheckpoint, Job.hyperparameters, Job.config)
        .join(Job, Job.id == JobCheckpoint.job_id)
        .where(
            Job.id == name.job_id,
            Job.tenant_id == tenant_id,
            Job.adapter_name == name.adapter_name,
            JobCheckpoint.step == name.step,
            JobCheckpoint.digest.is_not(None),
        )
        # A step saved again by a later attempt of the job: its newest files.
        .order_by(JobCheckpoint.created_at.desc(), JobCheckpoint.id.desc())
        .limit(1)
    )
    with db.session() as s:
        row = s.execute(query).first()
        if row is None:
            raise model_not_found(model)
        found, hyperparameters, config = row
        # A full fine-tune's checkpoints are whole models, served on engines of their own.
        full = (hyperparameters or {}).get("finetuning_type") == FinetuningType.FULL
        return ResolvedModel(
            public_name=model,
            version_id=found.id,
            digest=found.digest,
            created_at=found.created_at,
            kind=VersionKind.MODEL if full else VersionKind.ADAPTER,
            # Served on the pool of the base the job trained on.
            base=job_base_name(config),
        )


def _resolved(public_name: str, v: AdapterVersion) -> ResolvedModel:
    return ResolvedModel(
        public_name=public_name,
        version_id=v.id,
        digest=v.digest,
        created_at=v.created_at,
        kind=version_kind(v),
        base=v.base_model,
    )


def resolve(db: Database, tenant_id: str, model: str, base_model_name: str) -> ResolvedModel:
    """The version a request for `model` uses, ignoring any canary split."""
    return route(db, tenant_id, model, base_model_name).primary


def list_adapters(db: Database, tenant_id: str) -> list[AdapterInfo]:
    with db.session() as s:
        adapters = s.scalars(select(Adapter).where(Adapter.tenant_id == tenant_id).order_by(Adapter.name))
        return [adapter_info(a) for a in adapters]


def get_adapter(db: Database, tenant_id: str, name: str) -> AdapterInfo:
    with db.session() as s:
        adapter = s.scalar(select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name))
        if adapter is None:
            raise model_not_found(name)
        return adapter_info(adapter)


def delete_adapter(db: Database, tenant_id: str, name: str, *, actor: str) -> list[VersionInfo]:
    """Forget the name and its versions, returned as they were, with its `adapter.delete`
    audit event. Their store files are the caller's (adapters.version_deletion): other rows,
    of any tenant, may share a digest."""
    with db.session() as s:
        adapter = lock_adapter(s, tenant_id, name)
        if adapter is None:
            raise model_not_found(name)
        before = adapter_info(adapter)
        deleted = before.versions
        record_change(
            s, actor=actor, action="adapter.delete", tenant_id=tenant_id, name=name, before=before, after=None
        )
        adapter.active_version_id = None
        s.flush()
        for v in list(adapter.versions):
            s.delete(v)
        s.delete(adapter)
    return deleted
