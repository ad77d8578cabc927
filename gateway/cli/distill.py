"""`tailor distill`: queue a distillation job from an inputs file, a system prompt and examples."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.config import Settings
from core.errors import TailorError, bad_request
from core.quotas import Quotas
from core.states import JobStatus
from gateway.cli import jobs as job_commands
from gateway.cli.common import JsonOpt, emit, fail, open_db

if TYPE_CHECKING:
    from trainer.jobs import JobInfo


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
    db = open_db()
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
        fail(exc)
    if wait:
        job_commands.run_job_now(job.id)
        job = jobs.get_job(db, owner.id, job.id)
    emit(asdict(job), as_json, _distill_text(job))
    if job.status == JobStatus.FAILED:
        typer.echo(f"error: {(job.error or {}).get('message', 'the job failed')}", err=True)
        raise typer.Exit(1)
