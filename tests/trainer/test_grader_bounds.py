"""trainer.graders under abuse: everything a tenant controls (templates, items, samples,
formulas, Python sources, how many sub-graders) is bounded, refused with a 400, or a flagged
error of the grade; never a 500, never work or memory without a bound."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from core.errors import TailorError
from trainer.graders import (
    Capabilities,
    GradingContext,
    Sample,
    grade,
    grade_batch,
    parse_grader,
    templates,
    text_similarity,
)
from trainer.graders import formula as formulas
from trainer.graders.runtime import GraderRuntime
from trainer.graders.spec import MAX_SUB_GRADERS

NONE = Capabilities()


def refused(raw: Any, capabilities: Capabilities = NONE) -> TailorError:
    with pytest.raises(TailorError) as info:
        parse_grader(raw, capabilities)
    assert info.value.status == 400 and info.value.code == "invalid_grader"
    return info.value


def check(input: str, reference: str = "x") -> dict[str, Any]:
    return {"type": "string_check", "name": "c", "input": input, "reference": reference, "operation": "eq"}


async def graded(raw: dict[str, Any], answer: str = "", item: dict[str, Any] | None = None, **context: Any) -> Any:
    return await grade(parse_grader(raw, NONE), Sample.from_text(answer), item or {}, GradingContext(**context))


def test_unclosed_braces_are_matched_in_linear_time() -> None:
    # `\{\{(.*?)\}\}` took 5 s on 20 KB of "{{" (quadratic); a template under the cap is
    # checked at once, and one past it is refused before any matching.
    started = time.perf_counter()
    parse_grader(check("{{" * (templates.MAX_TEMPLATE_CHARS // 2)), NONE)
    assert time.perf_counter() - started < 2.0
    error = refused(check("{{" * (1 << 19)))  # 1 MiB
    assert error.param == "grader.input" and "longer than" in error.message


async def test_rendering_stops_past_its_cap() -> None:
    # A 70 KB body naming a large field many times once allocated over 100 MiB.
    item = {"a": "x" * 100_000}
    result = await graded(check("{{item.a}}" * 20), item=item)
    assert result.reward == 0.0 and result.errors.truncated_observation_error
    with pytest.raises(templates.TooLarge):
        templates.render("{{item.a}}" * 20, Sample.from_text(""), item)
    assert templates.render("{{item.a}}" * 10, Sample.from_text(""), item) == "x" * 1_000_000


async def test_model_grader_input_is_capped_as_a_whole() -> None:
    calls: list[Any] = []

    async def model(name: str, body: dict[str, Any]) -> Any:
        calls.append(body)
        raise AssertionError("never asked")

    messages = [{"role": "user", "content": "{{item.a}}" * 6} for _ in range(3)]
    raw = {"type": "score_model", "name": "s", "model": "m", "input": messages}
    result = await graded(raw, item={"a": "x" * 100_000}, models=model)
    assert result.errors.truncated_observation_error and calls == []


@pytest.mark.parametrize("metric", ["fuzzy_match", "rouge_l", "bleu", "meteor", "rouge_2"])
async def test_text_metrics_refuse_texts_past_their_cap(metric: str) -> None:
    limit = text_similarity.MAX_CHARS.get(metric, text_similarity.LINEAR_MAX_CHARS)
    raw = {"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "{{item.r}}"}
    long = ("word " * limit)[: limit + 1]
    result = await graded(raw | {"evaluation_metric": metric}, long, {"r": "word"})
    assert result.reward == 0.0 and result.errors.truncated_observation_error
    same = "the cat sat on the mat"
    result = await graded(raw | {"evaluation_metric": metric}, same, {"r": same})
    assert result.reward > 0.9 and not result.errors.any


def test_a_rouge_metric_computes_only_its_own_type() -> None:
    # A scorer of all six types ran ROUGE-L's quadratic LCS for rouge_1 too.
    assert text_similarity._rouge_scorer("rouge1").rouge_types == ["rouge1"]


async def test_text_metrics_run_off_the_event_loop() -> None:
    raw = {"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "{{item.r}}"}
    loop_thread: list[bool] = []
    original = text_similarity.METRICS["gleu"]

    def spy(text: str, reference: str) -> float:
        loop_thread.append(_on_loop())
        return original(text, reference)

    text_similarity.METRICS["gleu"] = spy
    try:
        await graded(raw | {"evaluation_metric": "gleu"}, "a b c", {"r": "a b c"})
    finally:
        text_similarity.METRICS["gleu"] = original
    assert loop_thread == [False]


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_deep_formulas_are_refused_not_a_500() -> None:
    graders = {"a": check("{{sample.output_text}}")}
    error = refused({"type": "multi", "name": "m", "graders": graders, "calculate_output": "a" + "+a" * 999})
    assert error.param == "grader.calculate_output"
    with pytest.raises(formulas.FormulaError):
        formulas.parse("(" * 1000 + "a" + ")" * 1000, {"a"})


def test_a_sample_nested_past_the_parser_is_text() -> None:
    sample = Sample.from_text("[" * 100_000)
    assert not sample.is_json and sample.output_text.startswith("[[")


def test_multi_graders_have_a_cap() -> None:
    graders = {f"g{i}": check("{{sample.output_text}}") for i in range(MAX_SUB_GRADERS + 1)}
    error = refused({"type": "multi", "name": "m", "graders": graders, "calculate_output": "g0"})
    assert error.param.startswith("grader.graders")
    del graders[f"g{MAX_SUB_GRADERS}"]
    parse_grader({"type": "multi", "name": "m", "graders": graders, "calculate_output": "g0"}, NONE)


async def test_a_grade_past_its_deadline_is_unresponsive() -> None:
    async def slow(name: str, body: dict[str, Any]) -> Any:
        await asyncio.sleep(60)

    messages = [{"role": "user", "content": "{{sample.output_text}}"}]
    sub = {"type": "score_model", "name": "s", "model": "m", "input": messages}
    raw = {"type": "multi", "name": "m", "graders": {"s": sub, "t": sub}, "calculate_output": "s + t"}
    started = time.perf_counter()
    result = await graded(raw, "x", models=slow, timeout_s=0.2)
    assert result.reward == 0.0 and result.errors.unresponsive_reward_error
    assert time.perf_counter() - started < 5.0
    [batch] = await grade_batch(
        parse_grader(raw, NONE), [(Sample.from_text("x"), {})], GradingContext(models=slow, timeout_s=0.2)
    )
    assert batch.errors.unresponsive_reward_error


def test_python_source_is_not_compiled_in_the_gateway() -> None:
    # 44k keyword arguments took 28 s to compile, holding the GIL; a deeply nested source
    # raised RecursionError (a 500). Parsing only checks; the sandbox compiles.
    source = "def grade(sample, item):\n    return f(" + ", ".join(f"a{i}=1" for i in range(44_000)) + ")\n"
    nested = "def grade(sample, item):\n    return " + "(" * 100_000 + ")" * 100_000 + "\n"
    enabled = Capabilities(python=True)
    for text in (source[:250_000], nested[:250_000]):
        started = time.perf_counter()
        parse_grader({"type": "python", "name": "p", "source": text}, enabled)
        assert time.perf_counter() - started < 1.0


async def test_one_tenant_cannot_hold_every_python_slot() -> None:
    runtime = GraderRuntime(sandbox=None, python_slots=asyncio.Semaphore(2), per_tenant=1)
    held = runtime.python_slots_for("greedy")
    async with held:
        second = asyncio.create_task(_hold(runtime.python_slots_for("greedy")))
        await asyncio.sleep(0.05)
        assert not second.done()  # the greedy tenant's second grade waits for its first...
        await asyncio.wait_for(_hold(runtime.python_slots_for("other")), 1.0)  # ...another tenant does not
    await asyncio.wait_for(second, 1.0)
    assert runtime._tenants == {}  # nothing kept per tenant once its grades are done


async def _hold(slot: Any) -> None:
    async with slot:
        await asyncio.sleep(0)
