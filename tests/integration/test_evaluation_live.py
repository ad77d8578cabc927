"""Evaluation on a real vLLM engine (trainer.compute.evaluation): a trained adapter against
the base model, both generated and scored by the engine that serves them.

The engine is the session's evaluation engine (tests/conftest.py: `eval_engine`), started
the way a trainer worker starts its own.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import LiveEngine
from tests.integration.conftest import MODEL_DIR, QUESTION, TAUGHT_ANSWER
from trainer.compute.engine import answer_budget
from trainer.compute.evaluation import evaluate, plan
from trainer.evaluate import EvalExample

QUESTIONS = (QUESTION, "Tell me the capital of France.", "Which city is the capital of France?")


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(MODEL_DIR)


def served(engine: LiveEngine) -> list[str]:
    return sorted(m["id"] for m in engine.client.http.get("/v1/models").json()["data"])


def examples(answer: str) -> list[EvalExample]:
    return [EvalExample([{"role": "user", "content": q}], answer) for q in QUESTIONS]


def test_a_trained_adapter_beats_the_base_model_on_what_it_learned(
    eval_engine: LiveEngine, trained_adapter: Path, tokenizer: object
) -> None:
    held_out = examples(TAUGHT_ANSWER)
    # The engine is shared by the session (other tests' gateways load their adapters into it),
    # so what matters is that this evaluation leaves it serving exactly what it served before.
    served_before = served(eval_engine)
    comparison, p = evaluate(
        eval_engine.client,
        tokenizer,
        held_out,
        candidate_dir=trained_adapter,
        baseline_dir=None,
        tag="job-live",
        max_model_len=2048,
    )
    c, b = comparison.candidate, comparison.baseline
    assert c.exact_match == 1.0 and b.exact_match == 0.0, comparison.examples
    assert c.perplexity < 1.5 < 10 * c.perplexity < b.perplexity, (c.perplexity, b.perplexity)
    assert [e.candidate_output for e in comparison.examples] == [TAUGHT_ANSWER] * 3
    # max_tokens follows the references (answer and end-of-turn token), not a constant
    assert p.max_tokens == answer_budget([e.target_tokens for e in p.encoded], ceiling=2048)
    assert p.max_tokens < 64
    # the internal names are gone again: the engine serves what it served before
    assert served(eval_engine) == served_before
    assert not any(name.startswith("tailor-eval-job-live") for name in served_before)


def test_long_references_get_room_to_be_matched(eval_engine: LiveEngine, tokenizer: object) -> None:
    long_answer = " ".join(["The capital of France is Paris, a city on the Seine."] * 8)
    _, p = evaluate(
        eval_engine.client,
        tokenizer,
        examples(long_answer),
        candidate_dir=None,
        baseline_dir=None,
        tag="job-long",
        max_model_len=2048,
    )
    assert p.max_tokens > 1.5 * max(e.target_tokens for e in p.encoded)


def test_engine_perplexity_matches_the_model_in_float32(eval_engine: LiveEngine, tokenizer: object) -> None:
    """The engine scores exactly the tokens SFT trains on; bf16 vs float32 is the only difference."""
    held_out = examples("The capital of France is Paris.")
    comparison, p = evaluate(
        eval_engine.client, tokenizer, held_out, candidate_dir=None, baseline_dir=None, tag="ppl", max_model_len=2048
    )
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    total, count = 0.0, 0
    with torch.no_grad():
        for e in p.encoded:
            logits = model(torch.tensor([e.input_ids])).logits[0, :-1]
            labels = torch.tensor(e.labels[1:])
            total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    assert comparison.candidate.perplexity == pytest.approx(math.exp(total / count), rel=0.1)
    assert comparison.candidate.perplexity == comparison.baseline.perplexity  # the same model, twice
    assert plan(tokenizer, held_out, 2048).max_tokens == p.max_tokens
