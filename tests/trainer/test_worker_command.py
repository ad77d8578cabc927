"""`python -m trainer.worker` (trainer.worker.loop.main): the worker it runs presumes a job's
worker dead after TAILOR_TRAINER_STALE_AFTER_S, and beats often enough not to be presumed dead
itself. No model, no job: the worker is a stand-in that records how it was made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import get_settings
from trainer.worker import HEARTBEAT_S, STALE_AFTER_S, loop


class _Recorded:
    made: dict[str, Any] = {}

    def __init__(self, *_args: object, **kwargs: Any) -> None:
        _Recorded.made = kwargs

    def run_once(self, job_id: str | None = None) -> bool:
        return False  # no such job queued: main exits 1

    def close(self) -> None:
        pass


def _run_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    monkeypatch.setenv("TAILOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TAILOR_DATABASE_URL", f"sqlite:///{tmp_path / 'tailor.db'}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(loop, "Worker", _Recorded)
    get_settings.cache_clear()
    try:
        assert loop.main(["--job", "ftjob-none"]) == 1
    finally:
        get_settings.cache_clear()
    return _Recorded.made


def test_the_stale_heartbeat_bound_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _run_worker(tmp_path, monkeypatch, TAILOR_TRAINER_STALE_AFTER_S="20")
    assert made["stale_after_s"] == 20
    assert made["heartbeat_s"] == 5  # a quarter of it: a live worker is never presumed dead


def test_by_default_a_worker_is_presumed_dead_after_ten_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TAILOR_TRAINER_STALE_AFTER_S", raising=False)
    made = _run_worker(tmp_path, monkeypatch)
    assert (made["stale_after_s"], made["heartbeat_s"]) == (STALE_AFTER_S, HEARTBEAT_S)
