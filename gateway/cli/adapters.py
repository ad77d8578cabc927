"""`tailor adapters ...`: register, list, activate, roll back, canary and trace adapter versions.

Each change is one call to the adapter action (adapters.registry, adapters.promotion),
which records it in the audit log as `cli:<OS user>`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from core.config import Settings
from core.db import Database
from core.errors import TailorError
from gateway.cli.common import JsonOpt, emit, fail, open_db


def _registry_context() -> tuple[Database, Any, Any, Settings]:
    from adapters.registry import ValidationLimits
    from adapters.store import AdapterStore

    settings = Settings()
    db = open_db()
    store = AdapterStore.from_settings(settings)
    limits = ValidationLimits.from_settings(settings)
    return db, store, limits, settings


def adapters_register(
    tenant: str,
    name: str,
    path: Path,
    activate: Annotated[bool, typer.Option(help="Make it the version `name` serves.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Validate and store a PEFT adapter or a full model (directory or .zip/.tar.gz) as the next version."""
    from adapters import registry
    from gateway import audit, tenants

    db, store, limits, settings = _registry_context()
    try:
        owner = tenants.find_tenant(db, tenant)
        if path.is_dir():
            v = registry.register_dir(
                db,
                store,
                limits,
                tenant_id=owner.id,
                name=name,
                source_dir=path,
                base_model_name=settings.base_model_name,
                actor=audit.actor_for_cli(),
                source="path",
                activate=activate,
            )
        else:
            v = registry.register_archive(
                db,
                store,
                limits,
                tenant_id=owner.id,
                name=name,
                archive=path,
                base_model_name=settings.base_model_name,
                max_upload_bytes=settings.max_adapter_bytes,
                actor=audit.actor_for_cli(),
                activate=activate,
            )
    except TailorError as exc:
        fail(exc)
    emit(asdict(v), as_json, f"registered {tenant}/{name} version {v.version} ({_described(v)}, {v.digest[:12]})")


def _described(v: Any) -> str:
    return f"rank {v.rank}" if v.kind == "adapter" else f"full model, {v.size_bytes / 2**20:.0f} MiB"


def adapters_list(tenant: str, as_json: JsonOpt = False) -> None:
    from adapters import registry
    from gateway import tenants

    db = open_db()
    try:
        rows = registry.list_adapters(db, tenants.find_tenant(db, tenant).id)
    except TailorError as exc:
        fail(exc)
    emit(
        [asdict(a) for a in rows],
        as_json,
        "\n".join(f"{a.name}  active=v{a.active_version}  versions={len(a.versions)}" for a in rows) or "no adapters",
    )


def _switch(tenant: str, name: str, version: int | None, as_json: bool) -> None:
    from adapters import promotion
    from gateway import audit, tenants

    db = open_db()
    try:
        owner = tenants.find_tenant(db, tenant)
        if version is None:
            info = promotion.rollback(db, owner.id, name, actor=audit.actor_for_cli(), by="cli")
        else:
            info = promotion.promote(db, owner.id, name, version, actor=audit.actor_for_cli(), by="cli")
    except TailorError as exc:
        fail(exc)
    emit(asdict(info), as_json, f"{tenant}/{name} now serves version {info.active_version}")


def adapters_activate(tenant: str, name: str, version: int, as_json: JsonOpt = False) -> None:
    """Point `name` at one of its versions (takes effect within the gateways' cache TTL)."""
    _switch(tenant, name, version, as_json)


def adapters_rollback(tenant: str, name: str, as_json: JsonOpt = False) -> None:
    """Point `name` back at the version that was active before the current one."""
    _switch(tenant, name, None, as_json)


def adapters_canary(
    tenant: str,
    name: str,
    version: int,
    fraction: Annotated[float, typer.Option(help="Share of traffic for the canary; 0 stops it.")] = 0.1,
    as_json: JsonOpt = False,
) -> None:
    """Send a fraction of `name`'s traffic to another version (0 stops the canary)."""
    from adapters import promotion
    from gateway import audit, tenants

    db = open_db()
    try:
        owner = tenants.find_tenant(db, tenant)
        if fraction <= 0:
            info = promotion.stop_canary(db, owner.id, name, actor=audit.actor_for_cli())
        else:
            info = promotion.start_canary(db, owner.id, name, version, fraction, actor=audit.actor_for_cli(), by="cli")
    except TailorError as exc:
        fail(exc)
    emit(asdict(info), as_json, f"{tenant}/{name}: canary v{info.canary_version} at {info.canary_fraction:.0%}")


def adapters_lineage(tenant: str, name: str, as_json: JsonOpt = False) -> None:
    """Every version of `name`: state, dataset, job, metrics, who promoted it when."""
    from adapters import promotion
    from gateway import tenants

    db = open_db()
    try:
        rows = promotion.lineage(db, tenants.find_tenant(db, tenant).id, name)
    except TailorError as exc:
        fail(exc)
    emit(
        [asdict(r) for r in rows],
        as_json,
        "\n".join(
            f"v{r.version}  {r.state:<9} {r.serving or '':<7} source={r.source} job={r.job_id or '-'} "
            f"dataset={r.dataset_id or '-'} promoted={r.promoted_at or '-'} by={r.promoted_by or '-'}"
            for r in rows
        ),
    )
