"""`tailor adapters ...`: register, list, activate, roll back, canary and trace adapter versions.

Each change is one call to the adapter action (adapters.registry, adapters.promotion),
which records it in the audit log as `cli:<OS user>`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.config import Settings
from core.db import Database
from gateway.cli.common import JsonOpt, T, emit, on_db

if TYPE_CHECKING:
    from adapters.registry import AdapterInfo


def _for_tenant(tenant: str, action: Callable[[Database, str], T]) -> T:
    """`action(db, tenant id)` for the tenant named `tenant` (its name or id)."""
    from gateway import tenants

    return on_db(lambda db: action(db, tenants.find_tenant(db, tenant).id))


def adapters_register(
    tenant: str,
    name: str,
    path: Path,
    activate: Annotated[bool, typer.Option(help="Make it the version `name` serves.")] = True,
    base_model: Annotated[
        str | None, typer.Option(help="The base model it is for (a TAILOR_BASE_MODELS name); default: the first.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate and store a PEFT adapter or a full model (directory or .zip/.tar.gz) as the next version."""
    from adapters import registry
    from adapters.store import AdapterStore
    from gateway import audit

    settings = Settings()
    store = AdapterStore.from_settings(settings)

    def register(db: Database, tenant_id: str) -> registry.VersionInfo:
        limits = registry.ValidationLimits.from_settings(settings, registry.choose_base(settings, base_model))
        if path.is_dir():
            return registry.register_dir(
                db,
                store,
                limits,
                tenant_id=tenant_id,
                name=name,
                source_dir=path,
                base_model_name=settings.base_model_name,
                actor=audit.actor_for_cli(),
                source="path",
                activate=activate,
            )
        return registry.register_archive(
            db,
            store,
            limits,
            tenant_id=tenant_id,
            name=name,
            archive=path,
            base_model_name=settings.base_model_name,
            max_upload_bytes=settings.max_adapter_bytes,
            actor=audit.actor_for_cli(),
            activate=activate,
        )

    v = _for_tenant(tenant, register)
    emit(asdict(v), as_json, f"registered {tenant}/{name} version {v.version} ({_described(v)}, {v.digest[:12]})")


def _described(v: Any) -> str:
    return f"rank {v.rank}" if v.kind == "adapter" else f"full model, {v.size_bytes / 2**20:.0f} MiB"


def adapters_list(tenant: str, as_json: JsonOpt = False) -> None:
    from adapters import registry

    rows = _for_tenant(tenant, registry.list_adapters)
    emit(
        [asdict(a) for a in rows],
        as_json,
        "\n".join(f"{a.name}  active=v{a.active_version}  versions={len(a.versions)}" for a in rows) or "no adapters",
    )


def _switch(tenant: str, name: str, version: int | None, as_json: bool) -> None:
    from adapters import promotion
    from gateway import audit

    def switch(db: Database, tenant_id: str) -> AdapterInfo:
        if version is None:
            return promotion.rollback(db, tenant_id, name, actor=audit.actor_for_cli(), by="cli")
        return promotion.promote(db, tenant_id, name, version, actor=audit.actor_for_cli(), by="cli")

    info = _for_tenant(tenant, switch)
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
    from gateway import audit

    def canary(db: Database, tenant_id: str) -> AdapterInfo:
        if fraction <= 0:
            return promotion.stop_canary(db, tenant_id, name, actor=audit.actor_for_cli())
        return promotion.start_canary(db, tenant_id, name, version, fraction, actor=audit.actor_for_cli(), by="cli")

    info = _for_tenant(tenant, canary)
    emit(asdict(info), as_json, f"{tenant}/{name}: canary v{info.canary_version} at {info.canary_fraction:.0%}")


def adapters_lineage(tenant: str, name: str, as_json: JsonOpt = False) -> None:
    """Every version of `name`: state, dataset, job, metrics, who promoted it when."""
    from adapters import promotion

    rows = _for_tenant(tenant, lambda db, tenant_id: promotion.lineage(db, tenant_id, name))
    emit(
        [asdict(r) for r in rows],
        as_json,
        "\n".join(
            f"v{r.version}  {r.state:<9} {r.serving or '':<7} source={r.source} job={r.job_id or '-'} "
            f"dataset={r.dataset_id or '-'} promoted={r.promoted_at or '-'} by={r.promoted_by or '-'}"
            for r in rows
        ),
    )
