"""`tailor tenants ...` and `tailor keys ...`: tenants and their API keys, each change audited."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from core.errors import TailorError
from gateway.cli.common import JsonOpt, emit, fail, open_db


def tenants_create(name: str, as_json: JsonOpt = False) -> None:
    from gateway import audit, tenants

    db = open_db()
    try:
        t = tenants.create_tenant(db, name)
        audit.tenant_created(db, audit.actor_for_cli(), t)
    except TailorError as exc:
        fail(exc)
    emit(asdict(t), as_json, f"created tenant {t.name} ({t.id})")


def tenants_list(as_json: JsonOpt = False) -> None:
    from gateway import tenants

    rows = tenants.list_tenants(open_db())
    emit([asdict(t) for t in rows], as_json, "\n".join(f"{t.id}  {t.name}" for t in rows) or "no tenants")


def tenants_delete(name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    from gateway import audit, tenants

    if not yes:
        typer.confirm(f"Delete tenant {name} and everything it owns?", abort=True)
    db = open_db()
    try:
        owner = tenants.find_tenant(db, name)
        tenants.delete_tenant(db, owner.id)
        audit.tenant_deleted(db, audit.actor_for_cli(), owner)
    except TailorError as exc:
        fail(exc)
    typer.echo(f"deleted tenant {name}")


# --- keys -----------------------------------------------------------------------


def keys_create(
    tenant: str, name: Annotated[str | None, typer.Option(help="A label for the key.")] = None, as_json: JsonOpt = False
) -> None:
    """Create a key. Its secret is printed once; Tailor stores only a hash."""
    from gateway import audit, tenants

    db = open_db()
    try:
        new = tenants.create_key(db, tenant, name=name)
        audit.key_created(db, audit.actor_for_cli(), new.info)
    except TailorError as exc:
        fail(exc)
    emit(
        {**asdict(new.info), "key": new.secret},
        as_json,
        f"{new.secret}\n(key {new.info.id} for {tenant}; store it now, it is not shown again)",
    )


def keys_list(tenant: str, as_json: JsonOpt = False) -> None:
    from gateway import tenants

    try:
        rows = tenants.list_keys(open_db(), tenant)
    except TailorError as exc:
        fail(exc)
    emit(
        [asdict(k) for k in rows],
        as_json,
        "\n".join(f"{k.id}  {k.hint}  {'revoked' if k.revoked_at else 'active'}  {k.name or ''}" for k in rows)
        or "no keys",
    )


def keys_revoke(key_id: str, as_json: JsonOpt = False) -> None:
    from gateway import audit, tenants

    db = open_db()
    try:
        before = audit.key_state(db, key_id)
        info = tenants.revoke_key(db, key_id)
        audit.key_revoked(db, audit.actor_for_cli(), before, info)
    except TailorError as exc:
        fail(exc)
    emit(asdict(info), as_json, f"revoked {info.id}")


def keys_rotate(
    key_id: str,
    grace_seconds: Annotated[int, typer.Option(help="Seconds the old key keeps working; 0 revokes it now.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Replace a key with a new secret (printed once) for the same tenant and label."""
    from gateway import audit, tenants

    db = open_db()
    try:
        before = audit.key_state(db, key_id)
        new = tenants.rotate_key(db, key_id, grace_seconds=grace_seconds)
        audit.key_rotated(db, audit.actor_for_cli(), key_id, before, new.info, grace_seconds=grace_seconds)
    except TailorError as exc:
        fail(exc)
    emit(
        {**asdict(new.info), "key": new.secret},
        as_json,
        f"{new.secret}\n(key {new.info.id} replaces {key_id}; store it now, it is not shown again)",
    )
