"""The base models Tailor serves: TAILOR_BASE_MODELS, or the one TAILOR_BASE_MODEL_* describe.

Each base has a name (what a request's `model` says), the checkpoint directory its adapters
are checked against, and where it runs: engine URLs of operator-run vLLM servers, or, with
none, a child engine Tailor starts on that directory. The first base is the default one:
what fine-tuning trains on and what an adapter registered without a base is for.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# Base names become request `model` values next to adapter names (`name@vN`, `name:ftjob-...`):
# no ':', '/' or '@', so neither can be read as the other.
BASE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_BASE_NAME = re.compile(BASE_NAME_PATTERN)
# The fine-tuning job config key recording the base a job trains on (trainer.job_base), only
# when it is not the default base.
JOB_BASE_KEY = "base_model"


class BaseModelEntry(BaseModel):
    """One entry of TAILOR_BASE_MODELS, as the operator writes it."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None,
        description="Checkpoint directory (HF safetensors): served by a child engine when engine_urls is empty; "
        "its config.json is what adapters for this base are checked against.",
    )
    engine_urls: list[str] = Field(default_factory=list, description="Operator-run vLLM servers of this base.")
    api_key: SecretStr | None = Field(
        None, description="Key sent to this base's engine_urls (their --api-key); default: TAILOR_ENGINE_API_KEY."
    )
    eval_engine_url: str | None = Field(
        None,
        description="A vLLM server of this base that trainer workers evaluate its jobs on (as TAILOR_EVAL_ENGINE_URL "
        "is for the default base); unset: a worker starts one of its own on `path`. Never a serving engine.",
    )
    eval_engine_api_key: SecretStr | None = Field(None, description="Key sent to eval_engine_url (its --api-key).")

    @field_validator("engine_urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        return [_http_url(url, "engine_urls") for url in value]

    @field_validator("eval_engine_url")
    @classmethod
    def _check_eval_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value, "eval_engine_url")

    @model_validator(mode="after")
    def _served_somewhere(self) -> BaseModelEntry:
        if not self.path and not self.engine_urls:
            raise ValueError('a base needs "path" (a child engine serves it) or "engine_urls" (or both)')
        return self


def _http_url(url: str, setting: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{setting} are http(s) URLs, not {url!r}")
    return url.rstrip("/")


@dataclass(frozen=True)
class EvalEngine:
    """An operator-run vLLM server that trainer workers evaluate a base's jobs on."""

    url: str
    api_key: SecretStr | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BaseModelConfig:
    """A base model as the rest of Tailor uses it."""

    name: str
    # None: an operator-run base without a local checkpoint; no adapter can be checked against it.
    path: Path | None
    engine_urls: tuple[str, ...] = ()
    default: bool = False
    # Sent to engine_urls; None: TAILOR_ENGINE_API_KEY's.
    api_key: SecretStr | None = field(default=None, repr=False)
    # Where workers evaluate this base's jobs; None: an engine of their own on `path`. Never the
    # serving engine_urls (trainer.compute.engine says why).
    eval_engine: EvalEngine | None = None

    @property
    def child_engine(self) -> bool:
        """Tailor starts this base's engine itself."""
        return not self.engine_urls


def check_base_names(entries: dict[str, BaseModelEntry]) -> dict[str, BaseModelEntry]:
    """TAILOR_BASE_MODELS' names, refused at start-up when a request could not name them."""
    for name in entries:
        if not _BASE_NAME.fullmatch(name):
            raise ValueError(f"TAILOR_BASE_MODELS names match {BASE_NAME_PATTERN} (no ':', '/' or '@'), not {name!r}")
    return entries


def configured_bases(
    entries: dict[str, BaseModelEntry],
    *,
    name: str,
    path: Path,
    engine_urls: list[str],
    api_key: SecretStr | None,
    eval_engine: EvalEngine | None,
) -> tuple[BaseModelConfig, ...]:
    """Every base, the default first: TAILOR_BASE_MODELS' entries in their order, or the one
    base of TAILOR_BASE_MODEL_NAME, TAILOR_BASE_MODEL_PATH and TAILOR_ENGINE_URLS (`api_key`:
    TAILOR_ENGINE_API_KEY, for the bases that name no key of their own; `eval_engine`:
    TAILOR_EVAL_ENGINE_URL's, the default base's)."""
    if not entries:
        return (
            BaseModelConfig(
                name=name,
                path=path,
                engine_urls=tuple(engine_urls),
                default=True,
                api_key=api_key,
                eval_engine=eval_engine,
            ),
        )
    bases = []
    for index, (entry_name, entry) in enumerate(entries.items()):
        # The default base keeps TAILOR_BASE_MODEL_PATH when its entry names no checkpoint,
        # as a single URL-served base does: training and validation read it.
        entry_path = Path(entry.path) if entry.path else (path if index == 0 else None)
        bases.append(
            BaseModelConfig(
                name=entry_name,
                path=entry_path,
                engine_urls=tuple(entry.engine_urls),
                default=index == 0,
                api_key=entry.api_key or api_key,
                # The default entry's is TAILOR_EVAL_ENGINE_URL's by now (Settings copies it).
                eval_engine=eval_engine if index == 0 else _entry_eval_engine(entry),
            )
        )
    return tuple(bases)


def _entry_eval_engine(entry: BaseModelEntry) -> EvalEngine | None:
    return EvalEngine(entry.eval_engine_url, entry.eval_engine_api_key) if entry.eval_engine_url else None


def serving_eval_engines(bases: tuple[BaseModelConfig, ...]) -> list[str]:
    """The bases whose evaluation engine is a serving engine (one of any base's engine_urls, or
    called with a serving key): a configuration to warn about, since the trainer then holds a
    serving key, and on vLLM's CPU build an evaluation's prompt-logprobs request batched with
    tenant traffic can kill the engine core (trainer.compute.engine). Tests share engines so."""
    urls = {url for b in bases for url in b.engine_urls}
    keys = {b.api_key.get_secret_value() for b in bases if b.engine_urls and b.api_key}
    found = []
    for b in bases:
        key = b.eval_engine.api_key if b.eval_engine else None
        if b.eval_engine and (b.eval_engine.url in urls or (key and key.get_secret_value() in keys)):
            found.append(b.name)
    return found


def warn_of_serving_eval_engines(bases: tuple[BaseModelConfig, ...], logger: logging.Logger) -> None:
    for name in serving_eval_engines(bases):
        logger.warning(
            "the evaluation engine of %s is a serving engine (by URL or key): the trainer holds a serving key, "
            "and on vLLM's CPU build an evaluation can take that engine down; give it an engine of its own",
            name,
        )


def job_base_name(config: dict[str, Any] | None) -> str | None:
    """The base a fine-tuning job's config records it trains on; None: the default base."""
    name = (config or {}).get(JOB_BASE_KEY)
    return name if isinstance(name, str) else None
