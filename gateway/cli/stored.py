"""`tailor files from-stored`: a training file made from stored completions."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from core.config import Settings
from core.errors import TailorError, bad_request
from core.quotas import Quotas
from gateway.cli.common import JsonOpt, emit, fail, open_db


def _metadata_pairs(pairs: list[str]) -> dict[str, str]:
    from core.metadata import check_metadata

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise bad_request(f"--metadata {pair!r}: expected KEY=VALUE")
        out[key] = value
    try:
        return check_metadata(out)
    except ValueError as exc:
        raise bad_request(f"--metadata: {exc}") from None


def files_from_stored(
    tenant: str,
    model: Annotated[str | None, typer.Option(help="Only stored completions of this model (the teacher).")] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(metavar="KEY=VALUE", help="Only stored completions carrying this metadata pair; repeatable."),
    ] = None,
    filename: Annotated[str | None, typer.Option(help="The file's name in the Files API.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a fine-tune file from a tenant's stored chat completions (`store: true`): each example
    is a stored request's messages and its answer. Fine-tune a smaller model on it to distil the
    model that answered."""
    from core.blobs import BlobStore
    from gateway import tenants
    from gateway.stored_completions import Filter
    from gateway.stored_completions_file import create_training_file

    settings = Settings()
    db = open_db()
    try:
        owner = tenants.find_tenant(db, tenant)
        flt = Filter(model=model, metadata=_metadata_pairs(metadata or []))
        made = create_training_file(
            db,
            BlobStore.from_settings(settings),
            owner.id,
            flt,
            filename=filename,
            quotas=Quotas.from_settings(settings),
        )
    except TailorError as exc:
        fail(exc)
    info = made.file
    emit(
        {"file": asdict(info), "examples": made.examples, "skipped": made.skipped},
        as_json,
        f"file {info.id} ({info.filename}): {made.examples} examples, {made.skipped} stored completions skipped",
    )
