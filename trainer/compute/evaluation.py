"""A candidate against the version it would replace, generated and scored on a vLLM engine.

Both sides run on the same engine the same way (trainer.compute.engine): answers greedily,
batched by the engine, with `max_tokens` from the references' length; perplexity of the
references from the engine's prompt log-probabilities over exactly the tokens SFT trains on
(trainer.compute.encoding: the answer and its end-of-turn token). The scoring itself is
trainer.evaluate's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.errors import bad_request
from trainer.compute.encoding import EncodedExample, encode_completion, render, validate_prompt
from trainer.compute.engine import EngineClient, answer_budget
from trainer.datasets import PromptRecord
from trainer.evaluate import Comparison, EvalExample, ExampleResult, JudgeConfig, Metrics, Served, Side, compare
from trainer.rewards import Reward, Scores


@dataclass(frozen=True)
class Plan:
    """What an evaluation sends: the scored token sequences and the answer budget."""

    encoded: list[EncodedExample]
    max_tokens: int


def plan(tokenizer: Any, examples: Sequence[EvalExample], max_model_len: int) -> Plan:
    """Encode the references and size the answers for an engine with this context length."""
    longest_prompt = 0
    encoded: list[EncodedExample] = []
    for ex in examples:
        validate_prompt(ex.messages)
        prompt_len = len(render(tokenizer, ex.messages, add_generation_prompt=True))
        longest_prompt = max(longest_prompt, prompt_len)
        # One token of the context is left for the single token a completion must generate.
        e = encode_completion(tokenizer, ex.messages, ex.reference, max_model_len - 1)
        if e is not None:
            encoded.append(e)
    references = [e.target_tokens for e in encoded]
    return Plan(encoded, answer_budget(references, ceiling=max(1, max_model_len - longest_prompt)))


def side(client: EngineClient, model: str, examples: Sequence[EvalExample], p: Plan) -> Side:
    generated = client.generations(model, [e.messages for e in examples], p.max_tokens)
    total, count = client.nll(model, p.encoded)
    if count == 0:
        raise bad_request("no reference answer token to score", code="no_eval_targets")
    served = Served.measure(
        [g.seconds for g in generated], [g.prompt_tokens for g in generated], [g.completion_tokens for g in generated]
    )
    return Side([g.text for g in generated], math.exp(total / count), served)


def _targets(
    client: EngineClient, tag: str, dirs: Mapping[str, Path | None], own: Mapping[str, EngineClient]
) -> tuple[dict[str, Path], dict[str, tuple[EngineClient, str]]]:
    """({engine name: adapter dir} to load on `client`, {role: (engine, model) to ask}).

    A role on an engine of its own (a whole model) asks that engine's model; one with an
    adapter, the adapter on `client`; one with neither, the bare base model.
    """
    load: dict[str, Path] = {}
    targets: dict[str, tuple[EngineClient, str]] = {}
    for role, path in dirs.items():
        if role in own:
            targets[role] = (own[role], own[role].served_model)
        elif path is not None:
            name = f"tailor-eval-{tag}-{role}"
            load[name] = path
            targets[role] = (client, name)
        else:
            targets[role] = (client, client.served_model)
    return load, targets


def evaluate(
    client: EngineClient,
    tokenizer: Any,
    examples: Sequence[EvalExample],
    *,
    candidate_dir: Path | None,
    baseline_dir: Path | None,
    tag: str,
    max_model_len: int,
    judge: JudgeConfig | None = None,
    http_client: httpx.Client | None = None,
    own_engines: Mapping[str, EngineClient] | None = None,
) -> tuple[Comparison, Plan]:
    """Candidate vs baseline (each an adapter directory, or None for the bare base model;
    a role in `own_engines` is a whole model answering on that engine).

    `tag` makes the engine-side names unique (the job id): two workers sharing an engine never
    swap each other's adapters.
    """
    if not examples:
        raise bad_request("no evaluation examples", code="no_eval_examples")
    p = plan(tokenizer, examples, max_model_len)
    dirs = {"candidate": candidate_dir, "baseline": baseline_dir}
    load, targets = _targets(client, tag, dirs, own_engines or {})
    with client.adapters(load):
        candidate = side(*targets["candidate"], examples, p)
        baseline = side(*targets["baseline"], examples, p)
    return compare(examples, candidate, baseline, judge=judge, http_client=http_client), p


def evaluate_graded(
    client: EngineClient,
    prompts: Sequence[PromptRecord],
    reward: Reward,
    *,
    candidate_dir: Path | None,
    baseline_dir: Path | None,
    tag: str,
    max_tokens: int,
    own_engines: Mapping[str, EngineClient] | None = None,
) -> tuple[Comparison, int]:
    """A reinforcement job's candidate vs baseline: each answers the validation prompts greedily
    (as it will be served) and the job's grader scores the answers against their rows.
    Also: how many grades failed (each scored 0)."""
    if not prompts:
        raise bad_request("no validation prompts to grade", code="no_eval_examples")
    items = [p.fields() for p in prompts]
    dirs = {"candidate": candidate_dir, "baseline": baseline_dir}
    load, targets = _targets(client, tag, dirs, own_engines or {})
    with client.adapters(load):
        answers = {
            role: engine.answers(model, [p.messages for p in prompts], max_tokens)
            for role, (engine, model) in targets.items()
        }

    async def both() -> list[Scores]:
        # One event loop for both sides: the grader's semaphores and model calls live in it.
        return list(await asyncio.gather(*(reward.scores(answers[role], items) for role in dirs)))

    scores = dict(zip(dirs, asyncio.run(both()), strict=True))

    def metrics(role: str) -> Metrics:
        return Metrics(len(prompts), 0.0, 0.0, math.nan, None, grader_score=scores[role].mean)

    examples = [
        ExampleResult(prompt_text=p.messages[-1]["content"], reference=p.item, candidate_output=c, baseline_output=b)
        for p, c, b in zip(prompts, answers["candidate"], answers["baseline"], strict=True)
    ]
    failed = sum(s.errors for s in scores.values())
    return Comparison(metrics("candidate"), metrics("baseline"), examples), failed
