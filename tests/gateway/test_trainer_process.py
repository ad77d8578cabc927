"""gateway.trainer_process: the trainer child gets the environment it needs, not the gateway's."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.config import Settings
from gateway import trainer_process
from gateway.trainer_process import TrainerProcess, trainer_env

GATEWAY_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/tailor",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONPATH": "/srv/tailor",
    "VIRTUAL_ENV": "/srv/tailor/.venv",
    "CUDA_VISIBLE_DEVICES": "0",
    "NCCL_DEBUG": "WARN",
    "HF_HOME": "/srv/hf",
    "OMP_NUM_THREADS": "4",
    "TAILOR_DATA_DIR": "/srv/tailor/data",
    "TAILOR_SECRET_KEY": "seals-teacher-keys",
    "TAILOR_CONFIG_FILE": "/etc/tailor.env",
    "OPENAI_API_KEY": "sk-allowed-teacher-key",
    # what the trainer must never see
    "TAILOR_ADMIN_KEY": "adm-secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "AWS_ACCESS_KEY_ID": "AKIA-secret",
    "GITHUB_TOKEN": "ghp-secret",
    "DATABASE_URL": "postgresql://u:pw@db/other",
    "PGPASSWORD": "pg-secret",
    "TAILOR_NOT_A_SETTING": "x",
}
WITHHELD = {
    "TAILOR_ADMIN_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "GITHUB_TOKEN",
    "DATABASE_URL",
    "PGPASSWORD",
    "TAILOR_NOT_A_SETTING",
}


def settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(data_dir=tmp_path, teacher_key_env_allowlist="OPENAI_API_KEY=api.openai.com", **kw)  # type: ignore[arg-type]


def test_the_child_gets_what_it_needs_and_no_other_secret(tmp_path: Path) -> None:
    env = trainer_env(settings(tmp_path), GATEWAY_ENV)
    runtime = {k: v for k, v in GATEWAY_ENV.items() if k not in WITHHELD and not k.startswith("TAILOR_")}
    assert {k: v for k, v in env.items() if not k.startswith("TAILOR_")} == runtime
    assert not WITHHELD & env.keys()
    # The settings are the gateway's own values, from wherever it read them ...
    assert (
        env["TAILOR_DATA_DIR"] == str(tmp_path)
        and env["TAILOR_TEACHER_KEY_ENV_ALLOWLIST"] == '["OPENAI_API_KEY=api.openai.com"]'
    )
    # ... and no config file is read again by the child.
    assert env["TAILOR_CONFIG_FILE"] == os.devnull
    # nothing of an allow-list entry that is not set, either
    assert "OPENAI_API_KEY" not in trainer_env(Settings(data_dir=tmp_path), GATEWAY_ENV)


def test_an_admin_key_in_the_config_file_never_reaches_the_child(tmp_path: Path) -> None:
    given = Settings(data_dir=tmp_path, admin_key="adm-from-file", engine_api_key="engine-secret")  # type: ignore[arg-type]
    env = trainer_env(given, {"PATH": "/usr/bin"})
    assert "adm-from-file" not in json.dumps(env) and "engine-secret" not in json.dumps(env)
    assert env["TAILOR_CONFIG_FILE"] == os.devnull


def test_store_credentials_pass_only_to_a_trainer_whose_stores_need_them(tmp_path: Path) -> None:
    on_s3 = trainer_env(settings(tmp_path, adapter_store_url="s3://bucket/adapters"), GATEWAY_ENV)
    assert on_s3["AWS_SECRET_ACCESS_KEY"] == "aws-secret" and on_s3["AWS_ACCESS_KEY_ID"] == "AKIA-secret"
    on_pg = trainer_env(settings(tmp_path, database_url="postgresql://tailor@db/tailor"), GATEWAY_ENV)
    assert on_pg["PGPASSWORD"] == "pg-secret" and "AWS_SECRET_ACCESS_KEY" not in on_pg
    for env in (on_s3, on_pg):
        assert "TAILOR_ADMIN_KEY" not in env and "GITHUB_TOKEN" not in env


async def test_the_worker_is_started_with_that_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in GATEWAY_ENV.items():
        monkeypatch.setenv(name, value)
    started: list[dict[str, Any]] = []

    async def spawn(*args: Any, **kwargs: Any) -> Any:
        started.append({"args": args, **kwargs})
        return SimpleNamespace(pid=1, returncode=None)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    proc = TrainerProcess(tmp_path / "trainer.log", settings(tmp_path))
    await proc._spawn()
    [call] = started
    assert call["args"][1:] == ("-m", "trainer.worker")
    assert not WITHHELD & set(call["env"])
    assert call["env"]["OPENAI_API_KEY"] == "sk-allowed-teacher-key"
    assert call["env"]["TAILOR_SECRET_KEY"] == "seals-teacher-keys"
    assert trainer_process.os.environ["TAILOR_ADMIN_KEY"] == "adm-secret"  # the gateway keeps its own


def test_grader_model_endpoints_reach_the_child_with_their_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # They made settings_env raise (a nested model is not JSON), so the child could not start.
    endpoints = {"judge": {"base_url": "https://judge.example.com/v1", "api_key": "sk-op", "tenants": ["t1"]}}
    env = trainer_env(settings(tmp_path, grader_model_endpoints=endpoints), GATEWAY_ENV)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    back = Settings().grader_model_endpoints["judge"]
    assert back.api_key is not None and back.api_key.get_secret_value() == "sk-op"
    assert (back.base_url, back.tenants) == ("https://judge.example.com/v1", ["t1"])
