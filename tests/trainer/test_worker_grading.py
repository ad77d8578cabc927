"""trainer.worker.grading: which models a reinforcement job's model graders reach, resolved by
the worker: the operator's endpoints as they are, the tenant's base model and adapters on the
worker's engine, and nothing else (another tenant's adapter fails the job before training)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.config import GraderModelEndpoint, Settings
from core.errors import TailorError
from core.states import VersionKind
from trainer.worker.grading import grader_models

JUDGE = [{"role": "user", "content": "{{ sample.output_text }}"}]


def score(model: str, name: str = "s") -> dict[str, Any]:
    return {"type": "score_model", "name": name, "model": model, "input": JUDGE}


class FakeEngine:
    url, served_model, headers = "http://engine", "base", {"Authorization": "Bearer k"}

    def __init__(self) -> None:
        self.loaded: dict[str, Path] = {}

    @contextlib.contextmanager
    def adapters(self, named: Mapping[str, Path]) -> Iterator[None]:
        self.loaded.update(named)
        yield
        for name in named:
            del self.loaded[name]


def worker(tmp_path: Path, *, keep_own_engine: bool = True, **settings: Any) -> Any:
    versions = {"mine": SimpleNamespace(kind=VersionKind.ADAPTER, digest="d1", base_model="base"),
                "whole": SimpleNamespace(kind=VersionKind.MODEL, digest="d2", base_model="llama"),
                "elsewhere": SimpleNamespace(kind=VersionKind.ADAPTER, digest="d3", base_model="other")}  # fmt: skip
    # Jobs train on the default base; "other" is a second one.
    settings.setdefault("base_models", {"base": {"path": str(tmp_path / "base")}, "other": {"path": "other"}})

    def version_of(tenant_id: str, model: str) -> Any:
        if model in ("base", "other"):
            return None
        if tenant_id != "t1" or model not in versions:
            raise TailorError(404, f"The model {model!r} does not exist.", code="model_not_found")
        return versions[model]

    engine = FakeEngine()
    return SimpleNamespace(
        settings=Settings(data_dir=tmp_path, base_model_name="base", **settings),
        engines=SimpleNamespace(client=lambda: engine, keep_own_engine=keep_own_engine, engine=engine),
        version_of=version_of,
        store=SimpleNamespace(local_path=lambda digest: tmp_path / digest),
        event=lambda job, message, **kw: None,
    )


def job(grader: dict[str, Any], tenant_id: str = "t1") -> Any:
    return SimpleNamespace(id="ftjob-1", tenant_id=tenant_id, method="reinforcement", config={"grader": grader})


def test_the_tenants_base_and_adapters_answer_on_the_engine_for_the_block(tmp_path: Path) -> None:
    w = worker(tmp_path, grader_model_endpoints={"judge": GraderModelEndpoint(base_url="https://j.example/v1")})
    multi = {"type": "multi", "name": "m", "calculate_output": "a + b + c",
             "graders": {"a": score("base"), "b": score("mine"), "c": score("judge")}}  # fmt: skip
    with grader_models(w, job(multi)) as (models, engine):
        assert engine is w.engines.engine and models.engine_url == "http://engine"
        # the operator's endpoint is called as it is; the tenant's adapter under an internal name
        assert models.served == {"base": "base", "mine": "tailor-grader-ftjob-1-1"}
        assert w.engines.engine.loaded == {"tailor-grader-ftjob-1-1": tmp_path / "d1"}
    assert w.engines.engine.loaded == {}


def test_graders_without_the_tenants_models_need_no_engine(tmp_path: Path) -> None:
    w = worker(tmp_path, keep_own_engine=False)
    string = {"type": "string_check", "name": "s", "input": "{{ sample.output_text }}", "reference": "x",
              "operation": "eq"}  # fmt: skip
    with grader_models(w, job(string), training=True) as (models, engine):
        assert (models.tenant_id, models.served, engine) == ("t1", {}, None)


@pytest.mark.parametrize(
    ("model", "tenant_id", "why"),
    [
        ("mine", "t2", "neither one of your models"),  # another tenant's adapter
        ("nope", "t1", "neither one of your models"),
        ("whole", "t1", "whole model"),
        # The worker's engine serves the default base: another base, or an adapter of one,
        # would answer on the wrong model.
        ("other", "t1", "another base model"),
        ("elsewhere", "t1", "another base model"),
    ],
)
def test_models_the_tenant_cannot_grade_with_fail_the_job_first(
    tmp_path: Path, model: str, tenant_id: str, why: str
) -> None:
    w = worker(tmp_path)
    with pytest.raises(TailorError) as e, grader_models(w, job(score(model), tenant_id)):
        pass
    assert (e.value.status, e.value.code) == (400, "invalid_grader") and why in e.value.message
    assert w.engines.engine.loaded == {}


def test_an_operator_endpoint_kept_to_another_tenant_is_not_this_tenants(tmp_path: Path) -> None:
    endpoint = GraderModelEndpoint(base_url="https://j.example/v1", tenants=["t2"])
    w = worker(tmp_path, grader_model_endpoints={"judge": endpoint})
    with pytest.raises(TailorError) as e, grader_models(w, job(score("judge"))):
        pass
    assert "'judge'" in e.value.message


def test_a_gpu_worker_without_an_engine_during_training_says_so(tmp_path: Path) -> None:
    w = worker(tmp_path, keep_own_engine=False)
    with pytest.raises(TailorError) as e, grader_models(w, job(score("base")), training=True):
        pass
    assert "TAILOR_EVAL_ENGINE_URL" in e.value.message
    with grader_models(w, job(score("base"))) as (models, _):  # its evaluation has the engine
        assert models.served == {"base": "base"}
