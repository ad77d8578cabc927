"""`grade(grader, sample, item, context) -> GradeResult`, and `grade_batch` for many samples.

A grade never raises for what the sample or item hold (a missing variable, an answer that is
not JSON, a model that answered nonsense, a Python grader that crashed): those rewards are 0
with the error flag OpenAI reports. It raises TailorError only when the grader cannot be used
at all: a model grader naming a model the caller has none of (4xx from the model caller).
A model that failed for now (5xx, 429) is a `model_grader_server_error` with its details.
A rendered text over its cap is a `truncated_observation_error`; a grade that outlasts
`GradingContext.timeout_s` an `unresponsive_reward_error` (what ran so far is stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from core.errors import TailorError
from trainer.graders import formula, model_graders, string_check, templates, text_similarity
from trainer.graders.models import ModelCaller
from trainer.graders.result import GradeResult
from trainer.graders.sandbox import Sandbox, SandboxError
from trainer.graders.spec import (
    Grader,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from trainer.graders.templates import Sample, TooLarge, VariableError

log = logging.getLogger("tailor.graders")
# Text metrics are CPU work: off the event loop, on threads of their own (not the default
# executor the gateway's other blocking calls share), two at a time per process.
_METRICS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grader-metrics")


@dataclass
class GradingContext:
    """What grading may use: a model caller for model graders, a sandbox for Python graders
    (None: the grader was refused before, by spec.parse_grader), what a Python grade holds
    while it runs (a semaphore, or GraderRuntime.python_slots_for's per-tenant share of one),
    and how long one grade, all its sub-graders together, may take (None: no limit)."""

    models: ModelCaller | None = None
    sandbox: Sandbox | None = None
    python_slots: AbstractAsyncContextManager[Any] | None = None
    timeout_s: float | None = None


async def grade(grader: Grader, sample: Sample, item: Mapping[str, Any], context: GradingContext) -> GradeResult:
    started = time.perf_counter()
    result = GradeResult(name=grader.name, type=grader.type)
    try:
        async with asyncio.timeout(context.timeout_s):
            await _graded(result, grader, sample, item, context)
    except TimeoutError:
        result.reward = 0.0
        result.errors.unresponsive_reward_error = True
    result.execution_time = time.perf_counter() - started
    return result


async def grade_batch(
    grader: Grader,
    samples: Sequence[tuple[Sample, Mapping[str, Any]]],
    context: GradingContext,
    *,
    concurrency: int = 8,
) -> list[GradeResult]:
    """One result per (sample, item), in order: a trainer's rewards for a batch of completions."""
    slots = asyncio.Semaphore(concurrency)

    async def one(sample: Sample, item: Mapping[str, Any]) -> GradeResult:
        async with slots:
            return await grade(grader, sample, item, context)

    return list(await asyncio.gather(*(one(s, i) for s, i in samples)))


async def _graded(
    result: GradeResult, grader: Grader, sample: Sample, item: Mapping[str, Any], context: GradingContext
) -> None:
    """The grade into `result`, what the sample and item hold making it fail as OpenAI reports."""
    try:
        await _grade_into(result, grader, sample, item, context)
    except VariableError as exc:
        result.reward = 0.0
        result.errors.invalid_variable_error = True
        result.errors.sample_parse_error = exc.sample_not_json
    except TooLarge:
        result.reward = 0.0
        result.errors.truncated_observation_error = True


async def _grade_into(
    result: GradeResult, grader: Grader, sample: Sample, item: Mapping[str, Any], context: GradingContext
) -> None:
    if isinstance(grader, StringCheckGrader):
        text, reference = templates.render(grader.input, sample, item), templates.render(grader.reference, sample, item)
        result.reward = string_check.score(grader, text, reference)
    elif isinstance(grader, TextSimilarityGrader):
        text, reference = templates.render(grader.input, sample, item), templates.render(grader.reference, sample, item)
        loop = asyncio.get_running_loop()
        result.reward = await loop.run_in_executor(_METRICS, text_similarity.score, grader, text, reference)
    elif isinstance(grader, ScoreModelGrader | LabelModelGrader):
        await _model_grade(result, grader, sample, item, context)
    elif isinstance(grader, PythonGrader):
        await _python_grade(result, grader, sample, item, context)
    else:
        await _multi_grade(result, grader, sample, item, context)


async def _model_grade(
    result: GradeResult,
    grader: ScoreModelGrader | LabelModelGrader,
    sample: Sample,
    item: Mapping[str, Any],
    context: GradingContext,
) -> None:
    if context.models is None:
        raise TailorError(500, "Model graders need a model caller.", code="internal_error")
    result.sampled_model_name = grader.model
    try:
        reply = await model_graders.ask(grader, context.models, sample, item)
    except TailorError as exc:
        if exc.status < 500 and exc.status != 429:
            raise
        result.errors.model_grader_server_error = True
        result.errors.model_grader_server_error_details = exc.message
        return
    result.add_usage(grader.model, reply.usage)
    if reply.refusal:
        result.errors.model_grader_refusal_error = True
        return
    if isinstance(grader, ScoreModelGrader):
        value = model_graders.read_score(grader, reply)
    else:
        value = model_graders.read_label(grader, reply)
    if value is None:
        result.errors.model_grader_parse_error = True
        return
    result.reward = value


async def _python_grade(
    result: GradeResult, grader: PythonGrader, sample: Sample, item: Mapping[str, Any], context: GradingContext
) -> None:
    if context.sandbox is None:
        raise TailorError(500, "Python graders need a sandbox.", code="internal_error")
    slots = context.python_slots or contextlib.nullcontext()
    try:
        async with slots:
            outcome = await context.sandbox.run(grader.source, sample.namespace(), dict(item))
    except SandboxError as exc:
        result.errors.python_grader_server_error = True
        result.errors.python_grader_server_error_type = "sandbox_unavailable"
        log.error("python grader sandbox failed: %s", exc)
        return
    if outcome.reward is None:
        result.errors.python_grader_runtime_error = True
        result.errors.python_grader_runtime_error_details = outcome.error
        return
    result.reward = outcome.reward


async def _multi_grade(
    result: GradeResult, grader: MultiGrader, sample: Sample, item: Mapping[str, Any], context: GradingContext
) -> None:
    # One after another: a multi grader is a handful of graders (spec.MAX_SUB_GRADERS), and
    # model graders in the gateway share the client's request (its disconnect cancels them).
    for name, sub in grader.named().items():
        sub_result = GradeResult(name=sub.name, type=sub.type)
        await _graded(sub_result, sub, sample, item, context)
        result.sub_rewards[name] = sub_result.reward
        result.errors.merge(sub_result.errors)
        for model, usage in sub_result.usage.items():
            result.add_usage(model, usage)
        result.sampled_model_name = result.sampled_model_name or sub_result.sampled_model_name
    try:
        tree = formula.parse(grader.calculate_output, set(result.sub_rewards))
    except formula.FormulaError:
        result.errors.formula_parse_error = True
        return
    try:
        result.reward = formula.evaluate(tree, result.sub_rewards)
    except formula.FormulaValueError:
        result.errors.other_error = True
