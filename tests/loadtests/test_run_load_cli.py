"""run_load's command line: argument parsing, --help, `parse_timespan` in a subprocess (importing
locust there would monkey-patch this process) and the early exits of `main`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.run_load import cli as load_cli
from tests.loadtests.locust_fakes import ROOT, SUBPROCESS_TIMEOUT_S, options

# --- run_load: command line -----------------------------------------------------------------


def test_parser_defaults_match_the_readme_and_the_locustfile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAILOR_ADMIN_KEY", raising=False)
    args = load_cli._parser().parse_args([])
    assert (args.url, args.admin_key, args.users, args.spawn_rate, args.run_time) == (None, None, 8, 4.0, "60s")
    assert (args.tenants, args.adapters_per_tenant, args.max_error_rate) == (3, 3, 0.01)
    assert (args.warmup, args.promote_during_load, args.promote_interval, args.locust_args) == (True, False, 2.0, [])
    # the scenario defaults are the locustfile's (the real parser's, checked in a subprocess test)
    lf_defaults = options()
    for name in ("stream_share", "long_share", "feedback_share", "zipf_s", "min_tokens", "max_tokens"):
        assert getattr(args, name) == getattr(lf_defaults, name), name


def test_parser_options_and_arguments_for_locust(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAILOR_ADMIN_KEY", "adm-env")
    argv = [
        "--users", "4", "--run-time", "30s", "--promote-during-load", "--no-warmup", "--out", str(tmp_path),
        "--prices", '{"m": {"prompt": 0.1, "completion": 0.2}}', "--", "--stream-share", "0.9", "-L", "DEBUG",
    ]  # fmt: skip
    args = load_cli._parser().parse_args(argv)
    assert args.admin_key == "adm-env" and args.users == 4 and args.run_time == "30s"
    assert args.promote_during_load is True and args.warmup is False and args.out == tmp_path
    assert args.prices == {"m": {"prompt": 0.1, "completion": 0.2}}
    assert args.locust_args == ["--stream-share", "0.9", "-L", "DEBUG"]


def test_parser_rejects_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--prices", "{not json"], ["--users", "many"]):
        with pytest.raises(SystemExit) as exc:
            load_cli._parser().parse_args(argv)
        assert exc.value.code == 2
    assert "invalid loads value" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--users", "0"], "--users and --tenants must be >= 1"),
        (["--tenants", "0"], "--users and --tenants must be >= 1"),
        (["--adapters-per-tenant", "-1"], "--adapters-per-tenant >= 0"),
        (["--promote-during-load", "--adapters-per-tenant", "0"], "--promote-during-load needs at least one adapter"),
    ],
)
def test_main_refuses_bad_arguments_before_doing_anything(argv: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=message):
        load_cli.main([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_target_with_url_needs_an_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAILOR_ADMIN_KEY", raising=False)
    no_key = load_cli._parser().parse_args(["--url", "http://h:8000"])
    with pytest.raises(SystemExit, match="--url needs --admin-key"):
        load_cli._target(no_key).__enter__()
    args = load_cli._parser().parse_args(["--url", "http://h:8000/", "--admin-key", "adm"])
    with load_cli._target(args) as (url, key, description):
        assert (url, key, description) == ("http://h:8000", "adm", "http://h:8000/ (given)")


def run_module(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    return subprocess.run(
        [sys.executable, "-m", "loadtests.run_load", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


def test_help_lists_the_options() -> None:
    proc = run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m loadtests.run_load")
    for option in ("--url", "--users", "--run-time", "--promote-during-load", "--max-error-rate", "--prices"):
        assert option in proc.stdout


def test_parse_timespan_and_a_bad_run_time_in_a_subprocess(tmp_path: Path) -> None:
    code = (
        "import loadtests.run_load.locust_process as r;"
        " print([r.parse_timespan(t) for t in ('45', '30s', '2m', '1h1m1s')])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[45.0, 30.0, 120.0, 3661.0]"

    out = tmp_path / "out"
    proc = run_module("--run-time", "5x", "--out", str(out))
    assert proc.returncode != 0
    assert "invalid --run-time '5x'" in proc.stderr
    assert not out.exists()  # failed before creating the results folder or building adapters
