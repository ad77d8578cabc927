"""A reinforcement job's reward: its grader (trainer.graders), run on completions and dataset items.

A reinforcement fine-tuning job (OpenAI's `method.reinforcement`) names a grader; training
samples several answers per prompt and the grader scores each one against the prompt's row
of the training file (OpenAI's RFT format: `messages` ending with a user turn, plus any other
fields, which the grader reads as `{{ item.<field> }}`; the answer is `{{ sample.output_text }}`
and, when it is JSON, `{{ sample.output_json.<field> }}`). Every grader type the
`/v1/fine_tuning/alpha/graders` routes take is a reward, run by the same code:

    check_grader(spec, capabilities) -> the grader as the job stores it; the routes' 400s
    reward = reward_for(spec, context)  # await reward.scores(completions, items)

A grade that fails for what the answer or the row hold (or a grader model that failed for
now) rewards 0, as OpenAI's do; `Scores.errors` counts them. A grader that cannot be used
at all (a model that is not there) raises its TailorError: the job fails with it. No torch:
the gateway validates jobs with this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.graders import Capabilities, GradingContext, Sample, grade_batch, parse_grader, public
from trainer.graders.spec import Grader, LabelModelGrader, MultiGrader, ScoreModelGrader

PARAM = "method.reinforcement.grader"


def check_grader(spec: Any, capabilities: Capabilities, param: str = PARAM) -> dict[str, Any]:
    """The grader as the job stores it (as /validate answers it); a 400 whose `param` names the
    bad field, with /validate's codes (python_grader_disabled where Python graders are off)."""
    return public(parse_grader(spec, capabilities, param))


def model_names(spec: Mapping[str, Any]) -> set[str]:
    """The models a stored grader's score_model and label_model graders name."""
    return _models(parse_grader(dict(spec), Capabilities(python=True), PARAM))


def _models(grader: Grader) -> set[str]:
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return {grader.model}
    if isinstance(grader, MultiGrader):
        return set().union(*(_models(sub) for sub in grader.named().values()))
    return set()


@dataclass(frozen=True)
class Scores:
    """One reward per completion, in order, and how many of the grades failed (rewarded 0)."""

    rewards: list[float]
    errors: int = 0

    @property
    def mean(self) -> float:
        """The mean reward (0 for none)."""
        return sum(self.rewards) / len(self.rewards) if self.rewards else 0.0


@dataclass(frozen=True)
class Reward:
    """A job's grader with what it may use (GradingContext: model callers, sandbox, deadline)."""

    grader: Grader
    context: GradingContext
    concurrency: int = 8

    async def scores(self, completions: Sequence[str], items: Sequence[Mapping[str, Any]]) -> Scores:
        """Each completion graded against its own row (the same order; never shifted)."""
        if len(completions) != len(items):
            raise ValueError(f"{len(completions)} completions for {len(items)} rows")
        samples = [(Sample.from_text(text), item) for text, item in zip(completions, items, strict=True)]
        results = await grade_batch(self.grader, samples, self.context, concurrency=self.concurrency)
        return Scores([r.reward for r in results], sum(r.errors.any for r in results))


def reward_for(spec: Mapping[str, Any], context: GradingContext) -> Reward:
    """The stored grader as a reward. Checked again where it runs: a Python grader on a worker
    without the sandbox is a 400 in the routes' words, failing the job."""
    capabilities = Capabilities(python=context.sandbox is not None)
    return Reward(parse_grader(dict(spec), capabilities, PARAM), context)
