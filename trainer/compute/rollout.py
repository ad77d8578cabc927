"""A reinforcement step's answers sampled on the worker's vLLM engine (Recipe.sampler "engine").

TRL's GRPOTrainer hands its `rollout_func` the prompts of this process's share of the step,
each repeated once per answer it wants (its sampler lays a group out as consecutive copies),
and takes back one answer per entry: the prompt's token ids, the answer's token ids and
their sampling log-probabilities. `EngineRollout` is that function:

- at the first sampling of each optimizer step it saves the policy's LoRA (peft's
  save_pretrained: the trainable matrices only) into a directory of the run's own work dir,
  one per rank (DDP ranks hold the same weights, each saves and loads its own), loads it
  into the engine under a fresh internal name, `<Recipe.rollout_name>-<rank>-<step>`, and
  unloads the previous step's name and files;
- each run of identical prompts is one POST /v1/completions: the prompt as token ids (the
  chat template rendered here, as the trainer renders it: trainer.compute.encoding), n =
  its length, the trainer's temperature and top_p, max_completion_length tokens,
  `logprobs: 0` and `return_token_ids` so the sampled ids and their log-probabilities come
  back exactly (no re-tokenizing of text). The runs go to the engine together; it batches them.

GRPO's loss then scores those ids with the trained weights as they are at this step, so the
policy's own log-probabilities drive the update (on-policy, as with TRL's generate); the
engine's come along as TRL's `sampling_per_token_logps`. vLLM samples with the served
precision and LoRA kernels, so its numbers differ slightly from the trainer's; TRL's
importance-sampling correction for that is tied to its own vLLM modes, which are not used.

Any refusal of the engine (the adapter not loaded: an engine without --enable-lora or with a
--max-lora-rank below the job's lora_rank; a sampling request refused) fails the run with a
TailorError in the engine's words.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from core.errors import TailorError
from trainer.compute.encoding import render
from trainer.compute.engine import EngineClient
from trainer.compute.recipe import Recipe

# The Recipe.rollout_name's stem; the worker adds the job's id.
NAME_PREFIX = "tailor-rollout"


@dataclass(frozen=True)
class Group:
    """One run of identical prompts: sampled `n` times in one request."""

    prompt_ids: list[int]
    n: int


@dataclass(frozen=True)
class Answer:
    token_ids: list[int]
    logprobs: list[float | None]


def groups(prompt_ids: Sequence[list[int]]) -> list[Group]:
    """Consecutive identical prompts as one group each, in order."""
    out: list[Group] = []
    for ids in prompt_ids:
        if out and out[-1].prompt_ids == ids:
            out[-1] = Group(ids, out[-1].n + 1)
        else:
            out.append(Group(ids, 1))
    return out


def answers_of(data: dict[str, Any], n: int) -> list[Answer]:
    """The `n` answers of one /v1/completions response, in order."""
    choices = sorted(data.get("choices") or [], key=lambda c: int(c.get("index", 0)))
    if len(choices) != n:
        raise TailorError(502, f"the engine returned {len(choices)} answers for n={n}", code="engine_error")
    out = []
    for choice in choices:
        ids = choice.get("token_ids")
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
        if ids is None or logprobs is None or len(ids) != len(logprobs):
            raise TailorError(
                502,
                "the engine returned no token ids or log-probabilities for its answers (it must be a vLLM "
                "OpenAI server that takes return_token_ids)",
                code="engine_error",
            )
        out.append(Answer([int(t) for t in ids], [None if lp is None else float(lp) for lp in logprobs]))
    return out


@dataclass
class EngineRollout:
    """TRL's rollout_func, sampling through `client` with the step's LoRA (see the module's docstring)."""

    client: EngineClient
    name: str  # Recipe.rollout_name
    work_dir: Path  # the run's own: one directory per rank and saved step
    max_tokens: int
    seed: int = 0
    lora_rank: int = 0  # said in a refusal
    loaded: tuple[int, str, Path] | None = field(default=None, init=False)  # (step, name, files)

    def __call__(self, prompts: Sequence[Sequence[dict[str, str]]], trainer: Any) -> dict[str, list[Any]]:
        step, rank = int(trainer.state.global_step), int(trainer.accelerator.process_index)
        adapter = self.adapter(trainer, step, rank)
        runs = groups([render(trainer.processing_class, p, add_generation_prompt=True) for p in prompts])
        sampling = {"temperature": float(trainer.temperature), "top_p": float(trainer.args.top_p)}
        sampled = self.client.concurrently(
            lambda i: self.sample(adapter, runs[i], sampling, self.seed_of(rank, step, i)), range(len(runs))
        )
        out: dict[str, list[Any]] = {"prompt_ids": [], "completion_ids": [], "logprobs": []}
        for group, group_answers in zip(runs, sampled, strict=True):
            for answer in group_answers:
                out["prompt_ids"].append(list(group.prompt_ids))
                out["completion_ids"].append(answer.token_ids)
                out["logprobs"].append(answer.logprobs)
        return out

    def seed_of(self, rank: int, step: int, group: int) -> int:
        """A request's seed: the job's runs sample alike; ranks, steps and groups differ."""
        return random.Random(f"{self.seed}:{rank}:{step}:{group}").getrandbits(31)

    def sample(self, adapter: str, group: Group, sampling: dict[str, float], seed: int) -> list[Answer]:
        body = {
            "model": adapter,
            "prompt": group.prompt_ids,
            "n": group.n,
            "max_tokens": self.max_tokens,
            "logprobs": 0,
            "return_token_ids": True,
            "seed": seed,
            **sampling,
        }
        return answers_of(self.client.completion(body), group.n)

    def adapter(self, trainer: Any, step: int, rank: int) -> str:
        """The engine's name for the policy at `step`, saved and loaded at its first sampling."""
        if self.loaded is not None and self.loaded[0] == step:
            return self.loaded[1]
        files = self.work_dir / f"rank-{rank}-step-{step}"
        shutil.rmtree(files, ignore_errors=True)
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(files))
        name = f"{self.name}-{rank}-{step}"
        try:
            self.client.load_adapter(name, files)
        except TailorError as e:
            raise TailorError(
                502,
                f"{e.message}. Sampling through the engine needs one started with --enable-lora and a "
                f"--max-lora-rank of at least the job's lora_rank ({self.lora_rank}); or set the "
                'hyperparameter sampler to "trainer"',
                code=e.code,
            ) from e
        self.close()
        self.loaded = (step, name, files)
        return name

    def close(self) -> None:
        """Unload the adapter loaded last and delete its files."""
        if self.loaded is None:
            return
        _, name, files = self.loaded
        self.loaded = None
        self.client.unload_adapter(name)
        shutil.rmtree(files, ignore_errors=True)


class UnloadsAtTheEnd(TrainerCallback):
    """The last step's adapter leaves the engine when training ends (the worker unloads
    whatever a failed run left: trainer.worker.sampling)."""

    def __init__(self, rollout: EngineRollout) -> None:
        self.rollout = rollout

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.rollout.close()


def rollout_args(recipe: Recipe, engine: EngineClient | None) -> dict[str, Any]:
    """GRPOTrainer's arguments for sampling on `engine` (the recipe's grader_models' engine)."""
    if engine is None or not recipe.rollout_name:
        raise TailorError(
            500, 'sampler "engine" without an engine to sample on (grader_models.engine_url)', code="training_failed"
        )
    rollout = EngineRollout(
        engine,
        recipe.rollout_name,
        Path(recipe.progress_path).parent / "rollout",
        recipe.max_completion_length,
        recipe.seed,
        recipe.lora_rank,
    )
    return {"rollout_func": rollout, "callbacks": [UnloadsAtTheEnd(rollout)]}
