"""What every `tailor` command shares: the database, printing text or JSON, and failing."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer

from core.config import Settings
from core.db import Database, migrate
from core.errors import TailorError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def open_db() -> Database:
    settings = Settings()
    migrate(settings.database_url or "")
    return Database.from_settings(settings)


def emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, default=json_default, indent=2))
    else:
        typer.echo(text)


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def fail(exc: TailorError) -> None:
    typer.echo(f"error: {exc.message}", err=True)
    raise typer.Exit(1)
