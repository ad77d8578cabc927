"""`tailor derive-model`: a smaller model from a subset of a model's layers, through typer's
CliRunner. What the derivation does is tests/adapters/test_derived_model.py; here, the
command's text and JSON output, its idempotence and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.adapters.test_derived_model import save_tiny_llama
from tests.gateway.cli_world import Cli


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.chdir(tmp_path)  # no stray tailor.env
    return Cli(tmp_path)


def test_derive_model_writes_once_and_says_so(cli: Cli, tmp_path: Path) -> None:
    source = save_tiny_llama(tmp_path / "tiny-llama")
    out = tmp_path / "tiny-3"
    first = cli.ok("derive-model", str(source), str(out), "--keep-layers", "every-other").stdout
    assert first.startswith(f"wrote {out}: 3 of 5 layers (0,2,4) of tiny-llama,")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    again = cli.json("derive-model", str(source), str(out))  # every-other is the default
    assert again["written"] is False and again["kept"] == [0, 2, 4] and again["source_layers"] == 5
    assert again["out"] == str(out) and len(again["source_digest"]) == 64


def test_derive_model_errors(cli: Cli, tmp_path: Path) -> None:
    source = save_tiny_llama(tmp_path / "tiny-llama")
    out = tmp_path / "tiny-3"
    assert "out of range" in cli.fails("derive-model", str(source), str(out), "--keep-layers", "0,7").stderr
    assert not out.exists()
    cli.ok("derive-model", str(source), str(out))
    assert "--force" in cli.fails("derive-model", str(source), str(out), "--keep-layers", "first:2").stderr
    replaced = cli.ok("derive-model", str(source), str(out), "--keep-layers", "first:1", "--force")
    assert "1 of 5 layers" in replaced.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "config.json" in cli.fails("derive-model", str(empty), str(tmp_path / "x")).stderr


def test_help_describes_the_layer_specs(cli: Cli) -> None:
    assert "derive-model" in cli.ok("--help").stdout
    text = cli.ok("derive-model", "--help").stdout
    for words in ("every-other", "first:N", "spread:N", "--force", "tailor-derived.json"):
        assert words in text, words
