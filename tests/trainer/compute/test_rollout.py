"""trainer.compute.rollout: a reinforcement step's answers sampled on the engine, against a fake
vLLM server (httpx.MockTransport): the requests it makes, the answers it hands TRL, the step
adapters it loads and unloads, and the clear failures an engine's refusals become."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from transformers import PreTrainedTokenizerBase

from core.errors import TailorError
from tests.trainer.tiny_models import user
from trainer.compute.encoding import render
from trainer.compute.engine import EngineClient
from trainer.compute.rollout import EngineRollout, groups, rollout_args

NAME = "tailor-rollout-ftjob-1"


class FakeEngine:
    """A vLLM OpenAI server's adapter and completion routes; `refuse` maps a route to its error."""

    def __init__(self, refuse: dict[str, int] | None = None, drop_ids: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.loaded: dict[str, str] = {}
        self.refuse, self.drop_ids = refuse or {}, drop_ids

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        route = request.url.path
        self.calls.append((route, body))
        if route in self.refuse:
            return httpx.Response(self.refuse[route], json={"error": {"message": f"no {route}", "code": 400}})
        if route == "/v1/load_lora_adapter":
            assert Path(body["lora_path"], "adapter_config.json").exists()
            self.loaded[body["lora_name"]] = body["lora_path"]
            return httpx.Response(200, text="ok")
        if route == "/v1/unload_lora_adapter":
            self.loaded.pop(body["lora_name"])
            return httpx.Response(200, text="ok")
        assert body["model"] in self.loaded
        choices = []
        for i in range(body["n"]):
            ids = [7 + i] * (1 + i % 3)
            logprobs = {"token_logprobs": [-0.5] * len(ids), "tokens": [f"token_id:{t}" for t in ids]}
            choices.append({"index": i, "text": "x", "logprobs": logprobs, "token_ids": None if self.drop_ids else ids})
        return httpx.Response(200, json={"choices": list(reversed(choices))})

    def completions(self) -> list[dict[str, Any]]:
        return [body for route, body in self.calls if route == "/v1/completions"]

    def adapter_calls(self) -> list[tuple[str, str]]:
        return [(route.split("/")[-1], body["lora_name"]) for route, body in self.calls if "lora" in route]


class Policy:
    """The trainer's model as the rollout saves it: an adapter directory."""

    def save_pretrained(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        Path(path, "adapter_config.json").write_text("{}")


def trainer(tok: PreTrainedTokenizerBase, step: int = 0) -> Any:
    return SimpleNamespace(
        state=SimpleNamespace(global_step=step),
        accelerator=SimpleNamespace(process_index=0, unwrap_model=lambda m: m),
        model=Policy(),
        processing_class=tok,
        temperature=0.9,
        args=SimpleNamespace(top_p=1.0),
    )


def rollout(tmp_path: Path, engine: FakeEngine) -> EngineRollout:
    client = EngineClient("http://engine", "", transport=httpx.MockTransport(engine))
    return EngineRollout(client, NAME, tmp_path / "rollout", max_tokens=6, seed=3, lora_rank=8)


PROMPTS = [user("What is the capital of France?")] * 4 + [user("France capital")] * 4


def test_each_group_is_one_request_of_n_answers_with_their_ids_and_logprobs(
    tmp_path: Path, tiny_tok: PreTrainedTokenizerBase
) -> None:
    engine = FakeEngine()
    out = rollout(tmp_path, engine)(PROMPTS, trainer(tiny_tok))
    requests = engine.completions()
    rendered = [render(tiny_tok, p, add_generation_prompt=True) for p in (PROMPTS[0], PROMPTS[4])]
    assert [r["prompt"] for r in requests] == rendered  # token ids, as the trainer renders them
    assert all(r["n"] == 4 and r["max_tokens"] == 6 and r["temperature"] == 0.9 for r in requests)
    assert all(r["logprobs"] == 0 and r["return_token_ids"] and r["model"] == f"{NAME}-0-0" for r in requests)
    assert requests[0]["seed"] != requests[1]["seed"]
    # One answer per prompt TRL handed over, in its order, each answer's choices by index.
    assert out["prompt_ids"] == [rendered[0]] * 4 + [rendered[1]] * 4
    assert out["completion_ids"][:4] == [[7], [8, 8], [9, 9, 9], [10]]
    assert [len(lp) for lp in out["logprobs"]] == [len(ids) for ids in out["completion_ids"]]
    assert out["logprobs"][1] == [-0.5, -0.5]


def test_runs_of_identical_prompts_group_however_the_slice_cuts_them() -> None:
    assert [(g.prompt_ids, g.n) for g in groups([[1], [1], [2], [1], [1], [1]])] == [([1], 2), ([2], 1), ([1], 3)]


def test_each_step_loads_a_fresh_adapter_and_unloads_the_last(
    tmp_path: Path, tiny_tok: PreTrainedTokenizerBase
) -> None:
    engine = FakeEngine()
    sample = rollout(tmp_path, engine)
    sample(PROMPTS[:4], trainer(tiny_tok, step=0))
    sample(PROMPTS[4:], trainer(tiny_tok, step=0))  # the same step: the same adapter
    sample(PROMPTS[:4], trainer(tiny_tok, step=1))
    assert engine.adapter_calls() == [
        ("load_lora_adapter", f"{NAME}-0-0"),
        ("load_lora_adapter", f"{NAME}-0-1"),
        ("unload_lora_adapter", f"{NAME}-0-0"),
    ]
    assert sorted(p.name for p in (tmp_path / "rollout").iterdir()) == ["rank-0-step-1"]  # the job's own dir
    sample.close()
    assert engine.loaded == {} and not any((tmp_path / "rollout").iterdir())


def test_an_engine_without_lora_fails_the_run_saying_what_it_needs(
    tmp_path: Path, tiny_tok: PreTrainedTokenizerBase
) -> None:
    with pytest.raises(TailorError) as e:
        rollout(tmp_path, FakeEngine(refuse={"/v1/load_lora_adapter": 404}))(PROMPTS, trainer(tiny_tok))
    assert e.value.status == 502 and "--enable-lora" in e.value.message and "lora_rank (8)" in e.value.message


def test_a_refused_sampling_request_fails_the_run_in_the_engines_words(
    tmp_path: Path, tiny_tok: PreTrainedTokenizerBase
) -> None:
    with pytest.raises(TailorError) as e:
        rollout(tmp_path, FakeEngine(refuse={"/v1/completions": 400}))(PROMPTS, trainer(tiny_tok))
    assert e.value.code == "engine_error" and "no /v1/completions" in e.value.message
    with pytest.raises(TailorError) as e:
        rollout(tmp_path, FakeEngine(drop_ids=True))(PROMPTS, trainer(tiny_tok))
    assert "return_token_ids" in e.value.message


def test_the_engine_sampler_needs_the_engine_the_worker_handed_over(tmp_path: Path) -> None:
    from tests.trainer.compute.test_grpo import recipe_for

    recipe = recipe_for(tmp_path, tmp_path, sampler="engine", rollout_name=NAME)
    with pytest.raises(TailorError):
        rollout_args(recipe, None)
    client = EngineClient("http://engine", "")
    args = rollout_args(recipe, client)
    assert isinstance(args["rollout_func"], EngineRollout) and args["rollout_func"].work_dir.parent == tmp_path


def test_a_grpo_run_trains_on_the_engines_answers(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In this process, TRL's real GRPOTrainer with the rollout: the fake engine's answers are what it scores.
    from tests.trainer.compute.test_grpo import recipe_for
    from trainer.compute import grpo, run

    engine = FakeEngine()
    client = EngineClient("http://engine", "", transport=httpx.MockTransport(engine))
    monkeypatch.setattr(grpo.GraderModels, "engine", lambda self, environ: client)
    recipe = recipe_for(
        tmp_path, tiny_model_dir, max_steps=2, batch_size=2, group_size=2, sampler="engine", rollout_name=NAME
    )
    result = run.train(recipe)
    assert result.steps == 2
    assert [name for call, name in engine.adapter_calls() if call == "load_lora_adapter"] == [
        f"{NAME}-0-0",
        f"{NAME}-0-1",
    ]
    assert engine.loaded == {}  # the last step's adapter left the engine when training ended
    assert all(r["n"] == 2 for r in engine.completions()) and len(engine.completions()) == 4
