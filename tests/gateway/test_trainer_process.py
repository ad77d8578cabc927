"""gateway.trainer_process: the trainer child gets the environment it needs, not the gateway's."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

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


def test_the_child_starts_where_engines_fetch_adapters_by_url(tmp_path: Path) -> None:
    # url mode needs the engine keys, which the trainer is not given: it is not told the mode.
    bases = {
        "main": {"path": str(tmp_path)},
        "remote": {"path": str(tmp_path), "engine_urls": ["http://r:1"], "api_key": "sk-remote-" + "r" * 16},
    }
    given = settings(tmp_path, base_models=bases, engine_adapter_source="url")
    env = trainer_env(given, {"PATH": "/usr/bin"})
    assert "TAILOR_ENGINE_ADAPTER_SOURCE" not in env and "sk-remote" not in str(env)
    with mock.patch.dict(os.environ, env, clear=True):
        child = Settings()
    assert [b.name for b in child.bases] == ["main", "remote"] and child.engine_adapter_source == "path"


def test_training_processes_hold_no_store_database_or_sealing_secret() -> None:
    from trainer.compute.launch import training_environment

    worker = {
        **GATEWAY_ENV,
        "TAILOR_DATABASE_URL": "postgresql+psycopg://u:pw@db/tailor",
        "TAILOR_EVAL_ENGINE_API_KEY": "eval-key",
        "TAILOR_JUDGE_API_KEY": "judge-key",
        "TAILOR_BASE_MODELS": '{"b": {"path": "/m", "eval_engine_api_key": "k"}}',
        "TAILOR_TEACHER_KEY_ENV_ALLOWLIST": "OPENAI_API_KEY=api.openai.com",
        "TAILOR_GRADER_MODEL_ENDPOINTS": '{"judge": {"base_url": "https://j.example/v1"}}',
    }
    env = training_environment(worker)
    kept = {"PATH", "HF_HOME", "OMP_NUM_THREADS", "TAILOR_DATA_DIR", "TAILOR_GRADER_MODEL_ENDPOINTS"}
    assert kept <= set(env)
    for name in ("TAILOR_DATABASE_URL", "TAILOR_SECRET_KEY", "TAILOR_ADMIN_KEY", "TAILOR_EVAL_ENGINE_API_KEY",
                 "TAILOR_JUDGE_API_KEY", "TAILOR_BASE_MODELS", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY",
                 "AWS_ACCESS_KEY_ID", "PGPASSWORD"):  # fmt: skip
        assert name not in env, name
