"""`tailor distill`: queueing a distillation job from local files, through typer's CliRunner.

Settings come from the environment as for the real command (TAILOR_DATA_DIR at tmp_path).
--wait runs a stand-in Worker that finishes the job at once: the real one trains a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.blobs import BlobStore
from core.config import Settings
from core.models import Job, StoredFile
from tests.gateway.cli_world import Cli, isolated_cli

TEACHER_KEY = "TEACHER_KEY"
SYSTEM = "You are Acme's support assistant. Answer in one short sentence.\n"
EXAMPLES = [
    {"role": "user", "content": "Do you ship abroad?"},
    {"role": "assistant", "content": "Yes, to 40 countries."},
]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    c = isolated_cli(tmp_path, monkeypatch)
    # The variables a job may name for its teacher's key; any other is refused.
    monkeypatch.setenv(
        "TAILOR_TEACHER_KEY_ENV_ALLOWLIST", f"{TEACHER_KEY}=teacher.example,NO_SUCH_TEACHER_KEY=teacher.example"
    )
    c.ok("tenants", "create", "acme")
    return c


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(*rows: Any) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def prompt(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def stored(cli: Cli) -> tuple[list[Job], list[StoredFile]]:
    db = cli.db()
    with db.session() as s:
        rows = list(s.scalars(select(Job))), list(s.scalars(select(StoredFile)))
    db.dispose()
    return rows


def file_bytes(f: StoredFile) -> bytes:
    return BlobStore(Settings().blob_store_url or "").get_bytes(f.storage_key)


def normalised(text: str) -> str:
    # Rich draws help in boxes and wraps it; compare words, not layout.
    return " ".join(text.replace("│", " ").split())


def test_help_lists_the_options(cli: Cli) -> None:
    assert "distill" in cli.ok("--help").stdout
    out = normalised(cli.ok("distill", "--help").stdout)
    for option in (
        "--adapter",
        "--inputs",
        "--system-prompt-file",
        "--examples-file",
        "--teacher-model",
        "--teacher-url",
        "--teacher-key-env",
        "--max-tokens",
        "--max-steps",
        "--model",
        "--wait",
        "--json",
    ):
        assert option in out, option
    assert "--teacher-key " not in out and "--api-key" not in out
    assert "shell history" in out
    assert '{"messages": [...]}' in out


def test_queues_a_job_from_a_jsonl_file_with_a_context(cli: Cli) -> None:
    inputs = jsonl(prompt("Where is my order?"), prompt("Can I pay by card?"))
    job = cli.json(
        "distill",
        "acme",
        "--adapter",
        "support-lite",
        "--inputs",
        write(cli.tmp / "inputs.jsonl", inputs),
        "--system-prompt-file",
        write(cli.tmp / "prompt.md", SYSTEM),
        "--examples-file",
        write(cli.tmp / "examples.json", json.dumps({"messages": EXAMPLES}, indent=2)),
        "--max-tokens",
        "64",
        "--max-steps",
        "3",
    )
    assert (job["status"], job["method"], job["adapter_name"], job["source"]) == (
        "queued",
        "distillation",
        "support-lite",
        "cli",
    )

    (row,), (f,) = stored(cli)
    assert row.id == job["id"] and row.method == "distillation" and row.training_file == f.id
    assert row.model == "SmolLM2-135M-Instruct"  # the base model, by default
    assert row.hyperparameters["max_steps"] == 3
    assert row.config == {
        "system": SYSTEM.strip(),
        "examples": EXAMPLES,
        "teacher": {"model": None, "base_url": None, "api_key_sealed": None, "api_key_env": None},
        "max_tokens": 64,
    }
    assert (f.kind, f.line_count, f.filename, f.purpose) == ("prompts", 2, "inputs.jsonl", "fine-tune")
    assert file_bytes(f) == inputs.encode()  # a .jsonl file is uploaded as it is


def test_queues_a_job_from_a_text_file_with_a_remote_teacher(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHER_KEY", "sk-very-secret")
    text = cli.ok(
        "distill",
        "acme",
        "--adapter",
        "support-lite",
        "--inputs",
        write(cli.tmp / "questions.txt", "Where is my order?\n\n  Can I pay by card?  \r\nDo you ship abroad?"),
        "--teacher-model",
        "big-model",
        "--teacher-url",
        "https://teacher.example/v1/",
        "--teacher-key-env",
        "TEACHER_KEY",
    ).stdout
    (row,), (f,) = stored(cli)
    assert text.strip() == f"job {row.id}: queued, adapter support-lite"

    assert (f.kind, f.line_count, f.filename) == ("prompts", 3, "questions.jsonl")
    lines = [json.loads(line) for line in file_bytes(f).decode().splitlines()]
    assert lines == [prompt("Where is my order?"), prompt("Can I pay by card?"), prompt("Do you ship abroad?")]

    assert row.config is not None
    assert row.config["teacher"] == {
        "model": "big-model",
        "base_url": "https://teacher.example/v1",
        "api_key_sealed": None,
        "api_key_env": "TEACHER_KEY",
    }
    assert row.config["system"] is None and row.config["examples"] == []
    assert "sk-very-secret" not in json.dumps(row.config)


def test_input_errors_exit_non_zero_with_one_line(cli: Cli) -> None:
    inputs = write(cli.tmp / "inputs.jsonl", jsonl(prompt("Hi?")))
    system = write(cli.tmp / "prompt.md", SYSTEM)

    def refused(*args: str) -> str:
        result = cli.fails("distill", "acme", "--adapter", "lite", *args)
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: "), result.stderr
        return result.stderr.strip()

    missing = refused("--inputs", str(cli.tmp / "nope.jsonl"), "--system-prompt-file", system)
    assert "nope.jsonl" in missing and "No such file" in missing

    answered = jsonl({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]})
    kind = refused("--inputs", write(cli.tmp / "answered.jsonl", answered), "--system-prompt-file", system)
    assert "holds sft examples; the distillation method needs prompts examples" in kind

    assert "line 2: not valid JSON" in refused(
        "--inputs", write(cli.tmp / "broken.jsonl", jsonl(prompt("Hi?")) + "{oops\n"), "--system-prompt-file", system
    )
    blank = write(cli.tmp / "blank.txt", "\n  \n")
    assert "has no inputs" in refused("--inputs", blank, "--system-prompt-file", system)

    no_model = refused("--inputs", inputs, "--teacher-url", "https://teacher.example/v1")
    assert no_model == "error: teacher.model is required with teacher.base_url."
    assert "needs a context to distill away" in refused("--inputs", inputs)
    assert "system must not be empty" in refused(
        "--inputs", inputs, "--system-prompt-file", write(cli.tmp / "empty.md", "\n")
    )
    assert "examples.json: not valid JSON" in refused(
        "--inputs", inputs, "--examples-file", write(cli.tmp / "examples.json", "[{")
    )
    assert "expected one JSON object" in refused(
        "--inputs", inputs, "--examples-file", write(cli.tmp / "list.json", json.dumps(EXAMPLES))
    )
    assert "must end with an assistant answer" in refused(
        "--inputs", inputs, "--examples-file", write(cli.tmp / "open.json", json.dumps({"messages": EXAMPLES[:1]}))
    )
    assert "ghost" in refused("--inputs", inputs, "--system-prompt-file", system, "--model", "ghost")
    assert "ghost" in refused("--inputs", inputs, "--system-prompt-file", system, "--teacher-model", "ghost")
    assert "max_steps" in refused("--inputs", inputs, "--system-prompt-file", system, "--max-steps", "0")
    # --wait makes this process the trainer host, which must have the key's variable.
    remote = ("--inputs", inputs, "--teacher-model", "big-model", "--teacher-url")
    assert "TAILOR_TEACHER_KEY_ENV_ALLOWLIST" in refused(
        *remote, "https://teacher.example/v1", "--teacher-key-env", "TAILOR_DATA_DIR"
    )
    assert "teacher.base_url" in refused(*remote, "http://127.0.0.1:8000/v1")
    assert "NO_SUCH_TEACHER_KEY" in refused(
        *remote, "https://teacher.example/v1", "--teacher-key-env", "NO_SUCH_TEACHER_KEY", "--wait"
    )
    assert cli.fails("distill", "nobody", "--adapter", "lite", "--inputs", inputs).stderr.strip() == (
        "error: No tenant 'nobody'."
    )

    # Nothing was queued, and no refused upload was left behind in the tenant's files.
    assert stored(cli) == ([], [])


class FakeWorker:
    """Stands in for trainer.worker.Worker: finishes the claimed job as `outcome` says, at once."""

    outcome: dict[str, Any] = {}

    def __init__(self, settings: Any, db: Any, store: Any, blobs: Any) -> None:
        self.db = db

    def run_once(self, job_id: str | None = None) -> bool:
        from trainer import job_queue

        job = job_queue.claim_next(self.db, "fake-worker", job_id=job_id)
        assert job is not None
        job_queue.finish_job(self.db, job.id, "fake-worker", **self.outcome)
        return True


def fake_run_job_now(cli: Cli) -> Any:
    """Stands in for the worker process `--wait` starts: FakeWorker, in this process."""

    def run(job_id: str) -> None:
        db = cli.db()
        try:
            FakeWorker(None, db, None, None).run_once(job_id)
        finally:
            db.dispose()

    return run


def test_wait_prints_the_result_and_the_distillation_figures(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.cli.jobs
    import trainer.worker

    monkeypatch.setattr(trainer.worker, "Worker", FakeWorker)
    monkeypatch.setattr(gateway.cli.jobs, "run_job_now", fake_run_job_now(cli))
    args = (
        "distill",
        "acme",
        "--adapter",
        "support-lite",
        "--inputs",
        write(cli.tmp / "q.txt", "Hi?\n"),
        "--system-prompt-file",
        write(cli.tmp / "prompt.md", SYSTEM),
        "--wait",
    )
    figures = {
        "prompt_tokens_saved_per_request": 41.6,
        "prompt_tokens_saved_fraction": 0.8125,
        "teacher_agreement_exact": 0.75,
        "teacher_agreement_f1": 0.9134,
    }
    succeeded = {
        "status": "succeeded",
        "fine_tuned_model": "support-lite@v1",
        "decision": "promoted",
        "metrics": {"steps": 3, "distillation": figures},
    }
    monkeypatch.setattr(FakeWorker, "outcome", succeeded)
    lines = cli.ok(*args).stdout.strip().splitlines()
    assert lines[0].endswith(": succeeded, adapter support-lite -> support-lite@v1 (promoted)"), lines
    assert lines[1:] == [
        "prompt tokens saved per request: 42 (81%)",
        "teacher agreement on held-out inputs: 75% exact, token F1 0.913",
    ]
    done = cli.json(*args)
    assert done["status"] == "succeeded" and done["metrics"]["distillation"] == figures

    # A job that failed in the worker fails the command too, with the job's own message.
    failure = {"code": "teacher_failed", "message": "teacher is down"}
    monkeypatch.setattr(FakeWorker, "outcome", {"status": "failed", "error": failure})
    failed = cli.fails(*args)
    assert failed.stdout.strip().endswith(": failed, adapter support-lite")
    assert failed.stderr.strip() == "error: teacher is down"
