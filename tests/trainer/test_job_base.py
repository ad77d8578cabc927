"""The base a fine-tuning job trains on (trainer.job_base) and the engine it is evaluated on
(trainer.compute.engine.WorkerEngines): which bases train what, and where each job looks."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.errors import TailorError
from trainer import job_base
from trainer.compute.engine import OwnEngine, WorkerEngines


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    bases = {
        "main": {"path": str(tmp_path / "main")},
        "local": {"path": str(tmp_path / "local")},
        "remote": {"engine_urls": ["http://remote:8000"], "api_key": "sk-remote"},
    }
    return Settings(data_dir=tmp_path, base_models=bases)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["supervised", "dpo", "kto"])
def test_lora_methods_train_on_a_base_with_a_checkpoint(settings: Settings, method: str) -> None:
    job_base.check_trainable(settings, settings.bases[1], method=method, full=False)


@pytest.mark.parametrize(
    ("method", "full", "said"),
    [
        ("distillation", False, "distillation method"),
        ("reinforcement", False, "reinforcement method"),
        ("merge", False, "merge method"),
        ("supervised", True, "full fine-tuning"),
    ],
)
def test_the_other_methods_are_refused_precisely(settings: Settings, method: str, full: bool, said: str) -> None:
    with pytest.raises(TailorError) as refused:
        job_base.check_trainable(settings, settings.bases[1], method=method, full=full)
    assert refused.value.code == "unsupported_base_model" and said in refused.value.message
    assert "'main'" in refused.value.message  # where it can train instead
    # The default base trains everything, as before.
    job_base.check_trainable(settings, settings.bases[0], method=method, full=full)


def test_a_base_without_a_checkpoint_cannot_train(settings: Settings) -> None:
    with pytest.raises(TailorError) as refused:
        job_base.check_trainable(settings, settings.bases[2], method="supervised", full=False)
    assert refused.value.status == 400 and refused.value.code == "unsupported_base_model"
    assert "local checkpoint" in refused.value.message


def test_the_job_records_its_base_only_off_the_default(settings: Settings) -> None:
    main, local, _ = settings.bases
    assert job_base.job_config(main, None) is None
    assert job_base.job_config(main, {"grader": 1}) == {"grader": 1}
    config = job_base.job_config(local, None)
    assert job_base.job_base(settings, config) == local
    assert job_base.job_base(settings, None) == main
    with pytest.raises(TailorError) as gone:
        job_base.job_base(settings, {"base_model": "/etc/passwd"})
    assert gone.value.code == "unknown_base_model"


def test_versions_of_another_base_do_not_mix(settings: Settings) -> None:
    main, local, _ = settings.bases
    job_base.check_same_base(settings, local, "local", "v")
    # Rows from before several bases (a checkpoint directory's name) are the default base's.
    job_base.check_same_base(settings, main, "SmolLM2-135M-Instruct", "v")
    with pytest.raises(TailorError) as mixed:
        job_base.check_same_base(settings, local, "main", "'x' version 1")
    assert mixed.value.code == "unsupported_base_model" and mixed.value.param == "suffix"


def test_each_base_is_evaluated_on_its_own_engine(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, str]] = []

    def start(own: OwnEngine) -> object:
        started.append((own.launch.served_name, own.launch.model_path.name))
        return _Healthy()

    monkeypatch.setattr(OwnEngine, "start", start)
    monkeypatch.setattr("trainer.compute.engine.EngineClient.healthy", lambda self: True)
    engines = WorkerEngines(settings)
    engines.client(settings.bases[1])
    engines.client(settings.bases[1])  # kept while the same base asks
    remote = engines.client(settings.bases[2])
    assert started == [("local", "local")]
    assert (remote.url, remote.served_model) == ("http://remote:8000", "remote")
    assert remote.headers == {"Authorization": "Bearer sk-remote"}
    engines.client()
    assert started == [("local", "local"), ("main", "main")]


class _Healthy:
    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass
