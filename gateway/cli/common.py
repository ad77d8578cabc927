"""What every `tailor` command shares: the database, printing text or JSON, and failing."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from core.config import Settings
from core.db import Database, migrate
from core.errors import TailorError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

T = TypeVar("T")


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


def fail(exc: TailorError) -> NoReturn:
    typer.echo(f"error: {exc.message}", err=True)
    raise typer.Exit(1)


def on_db(action: Callable[[Database], T]) -> T:
    """`action` on the configured database; its TailorError is the command's error (exit 1)."""
    db = open_db()
    try:
        return action(db)
    except TailorError as exc:
        fail(exc)
