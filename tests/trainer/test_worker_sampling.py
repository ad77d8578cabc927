"""trainer.worker.sampling: where a reinforcement job's answers are sampled, and the step
adapters a run left on the engine."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from core.config import Settings
from core.errors import TailorError
from trainer import hyperparameters as hps
from trainer.compute.engine import EngineClient
from trainer.compute.placement import Placement
from trainer.worker.sampling import rollout_name, sampling_for, unload_leftovers

RFT = SimpleNamespace(method="reinforcement", id="ftjob-abc")


def worker(
    tmp_path: Path, *, gpu: bool = False, sharding: str = "auto", default_base: bool = True, **settings: Any
) -> Any:
    placement = Placement("cuda", 2, "bf16", False, sharding=sharding) if gpu else Placement("cpu", 1, "fp32", False)
    return SimpleNamespace(
        settings=Settings(data_dir=tmp_path, **settings),
        placement=placement,
        engines=SimpleNamespace(keep_own_engine=not gpu),
        base_of=lambda job: SimpleNamespace(default=default_base),
    )


def sampler(w: Any, **hp: Any) -> tuple[str, str]:
    s = sampling_for(w, RFT, hps.resolve("reinforcement", hp, 8))  # type: ignore[arg-type]
    return s.sampler, s.why


def test_auto_samples_on_the_engine_wherever_a_lora_run_has_one(tmp_path: Path) -> None:
    assert sampler(worker(tmp_path)) == ("engine", "")
    assert sampler(worker(tmp_path, gpu=True, eval_engine_url="http://eval:8000")) == ("engine", "")
    assert sampler(worker(tmp_path), sampler="trainer") == ("trainer", "")
    # elsewhere the trainer samples, and the job's event says why
    assert "full fine-tune" in sampler(worker(tmp_path), finetuning_type="full")[1]
    assert "no engine while it trains" in sampler(worker(tmp_path, gpu=True))[1]
    assert "FSDP" in sampler(worker(tmp_path, gpu=True, sharding="fsdp", eval_engine_url="http://e"))[1]
    assert "--max-lora-rank 16" in sampler(worker(tmp_path), lora_rank=32)[1]
    assert "another base" in sampler(worker(tmp_path, default_base=False))[1]


def test_the_engine_sampler_where_it_cannot_run_is_a_400(tmp_path: Path) -> None:
    with pytest.raises(TailorError) as e:
        sampler(worker(tmp_path), sampler="engine", finetuning_type="full")
    assert (e.value.status, e.value.param) == (400, "hyperparameters.sampler")


def test_a_failed_runs_step_adapters_are_unloaded_and_nothing_else(tmp_path: Path) -> None:
    stem = rollout_name(RFT.id)
    names = [f"{stem}-0-3", f"{stem}-1-3", "base", "tailor-grader-ftjob-abc-0", f"{stem}x-0-1"]
    unloaded: list[str] = []

    def engine(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": n} for n in names]})
        unloaded.append(json.loads(request.content)["lora_name"])
        return httpx.Response(200, text="ok")

    unload_leftovers(EngineClient("http://e", "base", transport=httpx.MockTransport(engine)), stem)
    assert unloaded == [f"{stem}-0-3", f"{stem}-1-3"]
