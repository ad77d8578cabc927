"""Reinforcement fine-tuning (GRPO against a grader): the method module, and real runs through
launch.run_training on the tiny random Llama.

The reward the runs learn: the answer contains the row's `word` (a string_check `ilike`
grader reading `{{ item.word }}`), which a random model's answers do about one time in eight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase
from trl.trainer.utils import is_async_callable

from core.errors import TailorError
from tests.trainer.compute.runs import make_recipe, run
from tests.trainer.compute.test_methods import assert_servable
from tests.trainer.tiny_models import user
from trainer.compute import grpo

PROMPTS = ["What is the capital of France?", "capital of France?", "France capital", "What is the capital?"]
ROWS = [{"messages": user(q), "word": "is", "id": i} for i, q in enumerate(PROMPTS)]
GRADER = {
    "type": "string_check",
    "name": "has the word",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.word }}",
    "operation": "ilike",
}


def recipe_for(where: Path, base: Path, rows: list[dict[str, Any]] = ROWS, **knobs: Any) -> Any:
    values = {"grader": GRADER, "group_size": 8, "max_completion_length": 12, "beta": 0.04, **knobs}
    return make_recipe(where, "grpo", base, rows, **values)


def test_rows_become_prompts_with_their_grader_fields(tmp_path: Path, tiny_tok: PreTrainedTokenizerBase) -> None:
    recipe = recipe_for(tmp_path, tmp_path)
    dataset, dropped = grpo.build_dataset(tiny_tok, ROWS, recipe)
    assert dropped == 0 and len(dataset) == len(ROWS)
    assert dataset[1]["prompt"] == user(PROMPTS[1])
    assert json.loads(dataset[1][grpo.ITEM]) == {"word": "is", "id": 1}


def test_prompts_with_no_room_to_answer_are_dropped(tmp_path: Path, tiny_tok: PreTrainedTokenizerBase) -> None:
    long = {"messages": user(" ".join(["capital"] * 200)), "word": "is"}
    dataset, dropped = grpo.build_dataset(tiny_tok, [*ROWS, long], recipe_for(tmp_path, tmp_path, max_seq_length=64))
    assert (len(dataset), dropped) == (len(ROWS), 1)
    with pytest.raises(TailorError) as e:
        grpo.build_dataset(tiny_tok, ROWS, recipe_for(tmp_path, tmp_path, max_seq_length=12))
    assert e.value.param == "hyperparameters.max_completion_length"


def test_a_prompt_must_end_with_a_user_turn(tmp_path: Path, tiny_tok: PreTrainedTokenizerBase) -> None:
    answered = {"messages": [*user("hi"), {"role": "assistant", "content": "is"}]}
    with pytest.raises(TailorError):
        grpo.build_dataset(tiny_tok, [answered], recipe_for(tmp_path, tmp_path))


def test_the_batch_counts_prompts_and_each_is_sampled_group_size_times(tmp_path: Path) -> None:
    args = grpo.config_args(recipe_for(tmp_path, tmp_path, batch_size=2, group_size=4), None)
    assert (args["num_generations"], args["per_device_train_batch_size"]) == (4, 8)
    assert args["beta"] == 0.04 and args["max_completion_length"] == 12


async def test_the_reward_is_the_grader_on_each_answer_and_its_row(tmp_path: Path) -> None:
    (reward,) = grpo.trainer_args(recipe_for(tmp_path, tmp_path))["reward_funcs"]
    completions = [[{"role": "assistant", "content": "Paris IS."}], [{"role": "assistant", "content": "no"}]]
    items = [json.dumps({"word": "is"}), json.dumps({"word": "no"})]
    assert await reward(prompts=[[], []], completions=completions, item=items, trainer_state=None) == [1.0, 1.0]
    assert await reward(completions=completions, item=list(reversed(items))) == [0.0, 0.0]
    # TRL runs an async reward on its own event loop; its name is what TRL logs it under
    assert is_async_callable(reward) and reward.__name__ == grpo.REWARD_NAME


async def test_failed_grades_score_0_and_are_logged_as_a_share(tmp_path: Path) -> None:
    grader = {**GRADER, "input": "{{ sample.output_json.word }}"}  # an answer that is not JSON fails
    (reward,) = grpo.trainer_args(recipe_for(tmp_path, tmp_path, grader=grader))["reward_funcs"]
    logged: dict[str, float] = {}
    completions = ['{"word": "is"}', "is"]
    items = [json.dumps({"word": "is"})] * 2
    assert await reward(completions=completions, item=items, log_metric=logged.__setitem__) == [1.0, 0.0]
    assert logged == {"grader_errors": 0.5}


def test_a_run_without_a_grader_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TailorError) as e:
        grpo.trainer_args(recipe_for(tmp_path, tmp_path, grader=None))
    assert e.value.param == "method.reinforcement.grader"


def test_grpo_raises_the_mean_reward(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Full parameters: the tiny random model's logits are near uniform and tied to its
    # embeddings, which a LoRA does not train; every weight moving shows the reward in a few steps.
    steps = 10
    r = run(recipe_for(tmp_path, tiny_model_dir, max_steps=steps, learning_rate=1e-2, full_parameters=True))
    rewards = [s.metrics["mean_reward"] for s in r.steps]
    assert [s.step for s in r.steps] == list(range(1, steps + 1))
    assert all({"mean_reward", "reward_std", "kl"} <= s.metrics.keys() for s in r.steps)
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.15, rewards
    assert r.steps[-1].metrics["kl"] > 0  # it moved away from where it started, and says by how much
    assert r.result.steps == steps and r.result.examples_used == len(ROWS)


def test_grpo_on_a_lora_saves_a_servable_adapter_and_checkpoints(tmp_path: Path, tiny_model_dir: Path) -> None:
    r = run(recipe_for(tmp_path, tiny_model_dir, max_steps=2, checkpoint_every=1))
    assert [s.step for s in r.steps] == [1, 2]
    assert all(0.0 <= s.metrics["mean_reward"] <= 1.0 and s.metrics["reward_std"] >= 0 for s in r.steps)
    assert [step for step, _, _ in r.checkpoints] == [1]
    assert_servable(Path(r.recipe.out_dir), tiny_model_dir)
