"""The trainer worker that `tailor serve` runs beside the gateway, as its own process.

Training is CPU/GPU-heavy and must never block the gateway's event loop, so it runs in a
child process (`python -m trainer.worker`) that claims jobs from the database like any other
worker. If it dies it is restarted; a job it was running is re-queued by the next
worker once its heartbeat goes stale.

The child gets only the environment it needs (`trainer_env`), not the gateway's: it runs
code on tenants' behalf (a distillation job calls a URL the tenant chose), so whatever
secret of the operator's it does not have cannot leak from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from core.child_env import STORE_CREDENTIALS, runtime_env
from core.config import Settings, get_settings
from core.supervised import SupervisedChild

log = logging.getLogger("tailor.trainer")

# The worker never calls the HTTP API or a base's serving engines: those keys would only be more
# secrets to lose (an engine's key loads adapters on it and reads its base's adapters through the
# gateway). It evaluates on evaluation engines (TAILOR_EVAL_ENGINE_URL, a base's
# eval_engine_url), whose keys it gets, or on engines of its own.
# It does get TAILOR_GRADER_MODEL_ENDPOINTS with their keys: a job's reward grader may name them,
# and like the gateway it sends a key only to its own endpoint, through the outbound policy.
# Nor how engines fetch adapters: url mode asks for the engine key it is not given.
WITHHELD_SETTINGS = frozenset({"admin_key", "engine_api_key", "engine_adapter_source"})


def _plain(value: object) -> object:
    """`value` as JSON takes it, secrets revealed: the child reads them back as settings. (A
    pydantic dump would write a nested model's SecretStr as "**********".)"""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_plain(value))
    return str(value)


def settings_env(settings: Settings, *, withheld: frozenset[str] = WITHHELD_SETTINGS) -> dict[str, str]:
    """The gateway's settings (wherever they were read from) as the child's TAILOR_* variables,
    less the `withheld` ones; TAILOR_CONFIG_FILE points nowhere, so a config file holding the
    admin key is not read again by the child."""
    env = {
        f"TAILOR_{name.upper()}": _env_value(value)
        for name in Settings.model_fields
        if name not in withheld and (value := getattr(settings, name)) is not None
    }
    if "engine_api_key" in withheld and settings.base_models:
        # Every base's own serving key goes with TAILOR_ENGINE_API_KEY.
        keyless = {name: entry.model_copy(update={"api_key": None}) for name, entry in settings.base_models.items()}
        env["TAILOR_BASE_MODELS"] = _env_value(keyless)
    env["TAILOR_CONFIG_FILE"] = os.devnull
    return env


def trainer_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The trainer child's environment: what it needs, nothing else.

    That is the runtime's variables of `environ`, the settings (not the admin or engine
    key), the credentials of the stores it uses, and the variables the operator lets
    distillation jobs name as a teacher's key (TAILOR_TEACHER_KEY_ENV_ALLOWLIST).
    """
    urls = (settings.database_url, settings.adapter_store_url, settings.blob_store_url)
    prefixes = tuple(p for url in urls for p in STORE_CREDENTIALS.get(urlsplit(url or "").scheme, ()))
    return {**runtime_env(environ, names=settings.teacher_key_env_names, prefixes=prefixes), **settings_env(settings)}


class TrainerProcess(SupervisedChild):
    def __init__(self, log_file: Path, settings: Settings | None = None, *, stop_timeout_s: float = 15.0) -> None:
        # SIGTERM lets the worker stop between jobs; a job still running after the stop timeout
        # is killed and re-queued later from its stale heartbeat.
        super().__init__(name="trainer-process", max_backoff_s=60.0, stop_timeout_s=stop_timeout_s)
        self.log_file = log_file
        self.settings = settings or get_settings()

    async def _spawn(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "trainer.worker",
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                env=trainer_env(self.settings, os.environ),
            )
        log.info("trainer worker started (pid %s, log %s)", self.process.pid, self.log_file)

    def _exited(self, code: int) -> None:
        log.error("trainer worker exited with %s; restarting", code)
