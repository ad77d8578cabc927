"""Full fine-tuning's knobs and where such a run may start from (no training here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.registry import VersionInfo
from core.config import Settings
from core.errors import TailorError
from core.states import VersionKind, VersionState
from trainer import hyperparameters as hps
from trainer.worker.training import _compatible_start

BASE = "base-model"


def version(kind: VersionKind) -> VersionInfo:
    return VersionInfo(
        id="av-1", adapter_name="support", version=3, digest="0" * 64, rank=0, alpha=0.0, target_modules=[],
        size_bytes=1, state=VersionState.ACTIVE, source="training", active=True,
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc), kind=kind,
    )  # fmt: skip


@dataclass
class Worker:
    settings: Any = field(default_factory=lambda: Settings(base_model_name=BASE))
    events: list[str] = field(default_factory=list)

    def event(self, job: Any, message: str, **_: Any) -> None:
        self.events.append(message)


def job(model: str = BASE) -> Any:
    return SimpleNamespace(model=model)


@pytest.mark.parametrize("full", [True, False])
def test_a_run_continues_a_version_of_its_own_kind(full: bool) -> None:
    same = version(VersionKind.MODEL if full else VersionKind.ADAPTER)
    w = Worker()
    assert _compatible_start(w, job("support"), same, full=full) is same  # type: ignore[arg-type]
    assert _compatible_start(w, job(), None, full=full) is None  # type: ignore[arg-type]
    assert w.events == []


@pytest.mark.parametrize("full", [True, False])
def test_the_version_it_would_replace_is_left_out_if_it_is_the_other_kind(full: bool) -> None:
    other = version(VersionKind.ADAPTER if full else VersionKind.MODEL)
    w = Worker()
    assert _compatible_start(w, job(), other, full=full) is None  # type: ignore[arg-type]
    assert w.events and "starts from the base model" in w.events[0]


@pytest.mark.parametrize("full", [True, False])
def test_a_named_version_of_the_other_kind_fails_the_job(full: bool) -> None:
    other = version(VersionKind.ADAPTER if full else VersionKind.MODEL)
    with pytest.raises(TailorError) as refused:
        _compatible_start(Worker(), job("support@v3"), other, full=full)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.code, refused.value.param) == (
        400,
        "incompatible_starting_model",
        "model",
    )


def test_full_fine_tuning_takes_full_fine_tuning_rates() -> None:
    for method in ("supervised", "dpo", "kto", "reinforcement"):
        lora, full = hps.resolve(method, {}, 40), hps.resolve(method, {"finetuning_type": "full"}, 40)
        assert (lora.full_parameters, full.full_parameters) == (False, True)
        assert full.learning_rate == hps.FULL_LEARNING_RATE[method] < lora.learning_rate
        assert full.as_dict()["finetuning_type"] == "full" and lora.as_dict()["finetuning_type"] == "lora"
    assert hps.resolve("supervised", {"finetuning_type": "full", "learning_rate_multiplier": 10}, 40).learning_rate == (
        pytest.approx(1e-4)
    )
