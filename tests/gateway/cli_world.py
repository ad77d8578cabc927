"""The `tailor` CLI as the tests run it: typer's CliRunner, with Settings read from an
environment that holds only what the test sets (TAILOR_DATA_DIR at tmp_path/data)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from core.db import Database
from gateway.cli import app
from tests.adapters.test_validation import tiny_config

runner = CliRunner()


class Cli:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.base = tmp / "tiny-llama"

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return runner.invoke(app, list(args), input=input)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def fails(self, *args: str, code: int = 1) -> Result:
        result = self(*args)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result

    def db(self) -> Database:
        return Database(f"sqlite:///{(self.data / 'tailor.db').as_posix()}")


def isolated_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, base_model: bool = False) -> Cli:
    """A Cli on a fresh data dir, with no TAILOR_* variable or tailor.env of the host's;
    `base_model`: TAILOR_BASE_MODEL_PATH at a tiny Llama config (for registering adapters)."""
    for name in list(os.environ):
        if name.startswith("TAILOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray tailor.env
    c = Cli(tmp_path)
    if base_model:
        c.base.mkdir()
        (c.base / "config.json").write_text(json.dumps(tiny_config()))
        monkeypatch.setenv("TAILOR_BASE_MODEL_PATH", str(c.base))
    c.data.mkdir()  # a missing data dir has its own test: test_a_fresh_data_dir_is_created
    monkeypatch.setenv("TAILOR_DATA_DIR", str(c.data))
    return c
