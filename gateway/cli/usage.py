"""`tailor usage`: requests, tokens, latency, errors and cost per tenant, version, day and tier."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from core.config import Settings
from core.errors import TailorError
from gateway.cli.common import fail, json_default, open_db


def usage_cmd(
    tenant: Annotated[str | None, typer.Option(help="One tenant (name or id); default: all tenants.")] = None,
    since: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD (default: 30 days ago).")] = None,
    until: Annotated[str | None, typer.Option(help="Last day, YYYY-MM-DD (default: today).")] = None,
    group_by: Annotated[str, typer.Option(help="Comma-separated: day, model, version, tier.")] = (
        "day,model,version,tier"
    ),
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
) -> None:
    """Requests, tokens, latency, errors and cost per tenant, adapter version, day and tier (interactive or batch)."""
    from datetime import date

    from gateway import prices, tenants, usage

    settings = Settings()
    db = open_db()
    try:
        default_since, default_until = usage.default_range()
        last = date.fromisoformat(until) if until else default_until
        first = date.fromisoformat(since) if since else last - (default_until - default_since)
        tenant_id = tenants.find_tenant(db, tenant).id if tenant else None
        rows = usage.usage(
            db,
            tenant_id=tenant_id,
            since=first,
            until=last,
            group_by=usage.parse_group_by(group_by),
            prices=prices.prices_from_settings(settings),
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except TailorError as exc:
        fail(exc)
    if fmt == "csv":
        typer.echo(usage.to_csv(rows), nl=False)
    elif fmt == "json":
        typer.echo(
            json.dumps(
                {"data": [asdict(r) for r in rows], "totals": asdict(usage.totals(rows))},
                default=json_default,
                indent=2,
            )
        )
    else:
        for r in rows:
            typer.echo(
                f"{r.tenant:<16} {r.day or '-':<10} {r.model or '-':<28} v{r.adapter_version or '-':<4} "
                f"{r.tier or '-':<11} "
                f"req={r.requests:<6} err={r.errors:<4} in={r.prompt_tokens:<8} out={r.completion_tokens:<8} "
                f"p50={r.p50_latency_ms or 0:.0f}ms cost={r.cost:.4f}"
            )
        t = usage.totals(rows)
        typer.echo(
            f"total: {t.requests} requests, {t.prompt_tokens} prompt + {t.completion_tokens} completion tokens, "
            f"cost {t.cost:.4f}"
        )
