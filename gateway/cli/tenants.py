"""`tailor tenants ...` and `tailor keys ...`: tenants and their API keys, each change audited."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli.common import JsonOpt, emit, on_db, open_db

if TYPE_CHECKING:
    from gateway.tenants import NewKey


def tenants_create(name: str, as_json: JsonOpt = False) -> None:
    from gateway import audit, tenants

    t = on_db(lambda db: tenants.create_tenant(db, name, actor=audit.actor_for_cli()))
    emit(asdict(t), as_json, f"created tenant {t.name} ({t.id})")


def tenants_list(as_json: JsonOpt = False) -> None:
    from gateway import tenants

    rows = tenants.list_tenants(open_db())
    emit([asdict(t) for t in rows], as_json, "\n".join(f"{t.id}  {t.name}" for t in rows) or "no tenants")


def tenants_delete(name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    from gateway import audit, tenants

    if not yes:
        typer.confirm(f"Delete tenant {name} and everything it owns?", abort=True)
    on_db(lambda db: tenants.delete_tenant(db, name, actor=audit.actor_for_cli()))
    typer.echo(f"deleted tenant {name}")


# --- keys -----------------------------------------------------------------------


def keys_create(
    tenant: str, name: Annotated[str | None, typer.Option(help="A label for the key.")] = None, as_json: JsonOpt = False
) -> None:
    """Create a key. Its secret is printed once; Tailor stores only a hash."""
    from gateway import audit, tenants

    new = on_db(lambda db: tenants.create_key(db, tenant, name=name, actor=audit.actor_for_cli()))
    _emit_new_key(new, as_json, f"key {new.info.id} for {tenant}")


def keys_list(tenant: str, as_json: JsonOpt = False) -> None:
    from gateway import tenants

    rows = on_db(lambda db: tenants.list_keys(db, tenant))
    emit(
        [asdict(k) for k in rows],
        as_json,
        "\n".join(f"{k.id}  {k.hint}  {'revoked' if k.revoked_at else 'active'}  {k.name or ''}" for k in rows)
        or "no keys",
    )


def keys_revoke(key_id: str, as_json: JsonOpt = False) -> None:
    from gateway import audit, tenants

    info = on_db(lambda db: tenants.revoke_key(db, key_id, actor=audit.actor_for_cli()))
    emit(asdict(info), as_json, f"revoked {info.id}")


def keys_rotate(
    key_id: str,
    grace_seconds: Annotated[int, typer.Option(help="Seconds the old key keeps working; 0 revokes it now.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Replace a key with a new secret (printed once) for the same tenant and label."""
    from gateway import audit, tenants

    new = on_db(lambda db: tenants.rotate_key(db, key_id, grace_seconds=grace_seconds, actor=audit.actor_for_cli()))
    _emit_new_key(new, as_json, f"key {new.info.id} replaces {key_id}")


def _emit_new_key(new: NewKey, as_json: bool, what: str) -> None:
    """The one time a key's secret is shown: first on its own line, for copying."""
    text = f"{new.secret}\n({what}; store it now, it is not shown again)"
    emit({**asdict(new.info), "key": new.secret}, as_json, text)
