"""The base model a fine-tuning job trains on (core.base_models): the one its `model` names,
or the base of the adapter it continues.

A job on the default base is what it always was. On another base, supervised, DPO and KTO
LoRA jobs train on that base's checkpoint (its `path`), register their candidate for that base
and are evaluated on an engine serving it; the other methods (distillation, reinforcement,
full fine-tunes) stay on the default base. The job records its base in its config (under
`base_model`, only when not the default one), so the worker, and the routing of the job's
checkpoints, read it from the job rather than from names that may have changed meanwhile.
"""

from __future__ import annotations

from typing import Any

from adapters import promotion, registry
from core.base_models import JOB_BASE_KEY, BaseModelConfig, job_base_name
from core.config import Settings
from core.db import Database
from core.errors import bad_request

# The methods that train a LoRA on any base with a checkpoint.
ANY_BASE_METHODS = ("supervised", "dpo", "kto")


def requested_base(settings: Settings, db: Database, tenant_id: str, model: str) -> BaseModelConfig:
    """The base `model` trains on: the base it names, else the base the tenant's adapter (or
    version, or checkpoint) it names was registered for; 404 for a name that is neither."""
    base = settings.base(model)
    if base is not None:
        return base
    # The tenant's own names only: another tenant's adapter, a path or a URL is a 404.
    recorded = registry.resolve(db, tenant_id, model, settings.base_model_name).base
    return settings.recorded_base(recorded)


def serving_base(settings: Settings, db: Database, tenant_id: str, adapter_name: str) -> BaseModelConfig:
    """The base the tenant's `adapter_name` serves on (its active version's; the default base
    for a new name): where a retraining of it trains."""
    current = promotion.active_version(db, tenant_id, adapter_name)
    return settings.recorded_base(current.base_model if current is not None else None)


def check_trainable(settings: Settings, base: BaseModelConfig, *, method: str, full: bool) -> None:
    """A 400 `unsupported_base_model` for a job that cannot train on `base`."""
    if base.default:
        return
    default = settings.base_model_name
    if method not in ANY_BASE_METHODS or full:
        what = "full fine-tuning" if full and method in ANY_BASE_METHODS else f"the {method} method"
        raise bad_request(
            f"Base model {base.name!r} trains supervised, dpo and kto LoRA jobs only; {what} trains on the "
            f"default base model {default!r} and its adapters.",
            code="unsupported_base_model",
            param="model",
        )
    if base.path is None:
        raise bad_request(
            f"Base model {base.name!r} is served by engine URLs only: without a local checkpoint "
            '(a "path" in TAILOR_BASE_MODELS) it cannot be fine-tuned.',
            code="unsupported_base_model",
            param="model",
        )


def check_same_base(settings: Settings, base: BaseModelConfig, version_base: str | None, what: str) -> None:
    """A 400 when `what` (an adapter version a job continues or would replace) was registered
    for another base than the job's: its weights fit that base only. A version recording no
    configured base (from before several bases) is the default base's."""
    owner = settings.recorded_base(version_base)
    if owner.name != base.name:
        raise bad_request(
            f"{what} runs on base model {owner.name!r}; this job trains on {base.name!r}. "
            "Name another suffix, or train on that base.",
            code="unsupported_base_model",
            param="suffix",
        )


def training_base(
    settings: Settings, db: Database, tenant_id: str, model: str, *, method: str, full: bool, adapter_name: str | None
) -> BaseModelConfig:
    """The base a job from `model` trains on: a 400 when the method cannot train on it, or when
    the adapter its result is registered under (`adapter_name`) serves on another base."""
    base = requested_base(settings, db, tenant_id, model)
    check_trainable(settings, base, method=method, full=full)
    current = promotion.active_version(db, tenant_id, adapter_name) if adapter_name else None
    if current is not None:
        check_same_base(settings, base, current.base_model, f"{adapter_name!r}")
    return base


def job_config(base: BaseModelConfig, config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The config a job is queued with: `config`, plus its base when not the default one."""
    return config if base.default else {**(config or {}), JOB_BASE_KEY: base.name}


def job_base(settings: Settings, config: dict[str, Any] | None) -> BaseModelConfig:
    """The base a queued job trains on; 400 when its base is no longer configured."""
    name = job_base_name(config)
    if name is None:
        return settings.bases[0]
    base = settings.base(name)
    if base is None:
        raise bad_request(
            f"The job's base model {name!r} is no longer configured.", code="unknown_base_model", param="model"
        )
    return base
