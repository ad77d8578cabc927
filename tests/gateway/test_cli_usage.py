"""`tailor usage`: the metering report from the command line."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.config import Settings
from core.db import Database, migrate
from core.models import Interaction
from gateway import tenants
from gateway.cli import app


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TAILOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TAILOR_PRICES", json.dumps({"SmolLM2-135M-Instruct": {"prompt": 1.0, "completion": 2.0}}))
    settings = Settings()
    migrate(settings.database_url or "")
    db = Database(settings.database_url or "")
    acme = tenants.create_tenant(db, "acme")
    today = datetime.now(timezone.utc)
    with db.session() as s:
        for i, status in enumerate((200, 200, 500)):
            s.add(
                Interaction(
                    id=f"chatcmpl-{i}",
                    tenant_id=acme.id,
                    endpoint="chat.completions",
                    model="SmolLM2-135M-Instruct",
                    request={},
                    prompt_tokens=1000,
                    completion_tokens=500,
                    latency_ms=100.0 * (i + 1),
                    status_code=status,
                    created_at=today,
                )
            )
    db.dispose()
    return tmp_path


def test_usage_json_csv_and_table(data_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["usage", "--format", "json", "--group-by", "model"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["totals"]["requests"] == 3 and body["totals"]["errors"] == 1
    assert body["totals"]["cost"] == pytest.approx(3 * (1.0 + 1.0))  # 1K prompt at 1.0 + 0.5K completion at 2.0
    result = runner.invoke(app, ["usage", "--format", "csv", "--tenant", "acme"])
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 1 and rows[0]["requests"] == "3"
    result = runner.invoke(app, ["usage"])
    assert "total: 3 requests" in result.output


def test_usage_refuses_bad_ranges(data_dir: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["usage", "--since", "2020-01-01"]).exit_code != 0
    assert runner.invoke(app, ["usage", "--since", "not-a-date"]).exit_code == 2
    result = runner.invoke(app, ["usage", "--tenant", "nobody"])
    assert result.exit_code == 1
