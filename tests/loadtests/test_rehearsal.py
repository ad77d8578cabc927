"""The cluster rehearsal, short: PostgreSQL, an S3-compatible store, two mock engines and two
gateways on loopback, each fault injected under traffic through both gateways
(loadtests.rehearsal; `python -m loadtests.rehearsal --engine vllm` rehearses on real engines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import pg_cluster, rehearsal


def test_every_fault_is_survived(tmp_path: Path) -> None:
    if not (pg_cluster.PG_BIN / "pg_ctl").is_file():
        pytest.skip(f"PostgreSQL server binaries not found in {pg_cluster.PG_BIN}")
    out = tmp_path / "verdicts.json"
    code = rehearsal.main(["--seconds", "6", "--json", str(out)])
    verdicts = json.loads(out.read_text())
    assert [v["fault"] for v in verdicts] == [
        "promotion through gateway 1",
        "engine 1 killed (SIGKILL)",
        "PostgreSQL restarted",
    ]
    assert code == 0, verdicts


def test_the_report_fails_what_failed() -> None:
    table = rehearsal.report([rehearsal.Verdict("a", "fine", True), rehearsal.Verdict("b", "2 failed", False)])
    assert table.splitlines()[2:] == ["| a | fine | PASS |", "| b | 2 failed | FAIL |"]
