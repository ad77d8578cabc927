"""trainer.evaluate: text metrics, judge verdict parsing and win rate against a fake
OpenAI-compatible judge (httpx.MockTransport), adapter switching in one loaded model,
compare() end to end on a tiny random model, and generation + perplexity on the real one.

The real-model test needs models/SmolLM2-135M-Instruct and is skipped without it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from core.errors import TailorError
from tests.trainer.tiny_models import REAL_MODEL, real_model, save_tiny_llama, tiny_tokenizer, user
from trainer.evaluate import (
    EvalExample,
    JudgeConfig,
    LoadedModel,
    compare,
    exact_match,
    generate,
    judge_verdicts,
    judge_win_rate,
    normalize_answer,
    parse_verdict,
    reference_perplexity,
    token_f1,
)

# --- text metrics ---------------------------------------------------------------------


def test_normalisation_and_exact_match() -> None:
    assert normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("The answer is Paris", "Paris") == 0.0
    assert exact_match("an apple", "Apple") == 1.0  # articles dropped


def test_token_f1() -> None:
    assert token_f1("Paris", "Paris") == 1.0
    assert token_f1("Berlin", "Paris") == 0.0
    # pred tokens: it is paris (3); ref: paris (1); 1 common -> p=1/3, r=1 -> f1=0.5
    assert token_f1("It is Paris.", "Paris") == pytest.approx(0.5)
    # repeated tokens count at most as often as they appear on both sides
    assert token_f1("paris paris", "paris") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0 and token_f1("the", "x") == 0.0


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", "A"),
        ("**B**", "B"),
        ("[[A]]", "A"),
        ("My final verdict: [[B]]", "B"),
        ("Tie.", "TIE"),
        ("B. It names the right city.", "B"),
        ("A\n\nAnswer A is correct.", "A"),
        ("Verdict: A", "A"),
        ("After weighing both, the better answer is B.", "B"),
        ("Answer A is better than answer B.", "A"),
        ("Both are equally good.", "TIE"),
        ("Answer: B", "B"),
        ("A good answer would mention Paris.", None),
        ("I prefer a concise answer.", None),
        ("Answer A is better. No wait, answer B is better.", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict(reply: str | None, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


# --- the judge, faked -----------------------------------------------------------------


def fake_judge(replies: list[str] | None = None, status: int = 200) -> tuple[httpx.Client, list[dict]]:
    """An OpenAI-compatible /chat/completions that prefers the answer containing GOOD.

    `replies` (cycled) are format templates for the verdict letter, to exercise parsing.
    """
    seen: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/chat/completions")
        assert request.headers["authorization"] == "Bearer sk-judge"
        body = json.loads(request.content)
        seen.append(body)
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "nope", "type": "x"}})
        prompt = body["messages"][-1]["content"]
        a = prompt.split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
        b = prompt.split("[Answer B]\n")[1].split("\n\nWhich answer")[0]
        letter = "TIE" if ("GOOD" in a) == ("GOOD" in b) else ("A" if "GOOD" in a else "B")
        template = replies[(len(seen) - 1) % len(replies)] if replies else "{}"
        return httpx.Response(
            200,
            json={
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": template.format(letter)},
                    }
                ],
            },
        )

    return httpx.Client(transport=httpx.MockTransport(handle)), seen


JUDGE = JudgeConfig(base_url="http://judge.test/v1", api_key="sk-judge", model="judge-1")
EXAMPLES = [EvalExample(user(f"question {i}"), f"answer {i}") for i in range(8)]


def test_judge_win_rate_cancels_position_and_maps_back() -> None:
    client, seen = fake_judge(["{}", "**{}**", "Verdict: [[{}]]", "{}. Because it is right."])
    cand = [f"GOOD {i}" for i in range(8)]
    base = [f"meh {i}" for i in range(8)]
    assert judge_win_rate(JUDGE, EXAMPLES, cand, base, http_client=client) == 1.0
    assert len(seen) == 8 and seen[0]["model"] == "judge-1" and seen[0]["temperature"] == 0.0
    # the candidate was shown first on some items and second on others
    firsts = ["[Answer A]\nGOOD" in s["messages"][-1]["content"] for s in seen]
    assert any(firsts) and not all(firsts)
    # and the same seed gives the same order on a rerun
    client2, seen2 = fake_judge()
    assert judge_win_rate(JUDGE, EXAMPLES, base, cand, http_client=client2) == 0.0
    assert ["[Answer A]\nmeh" in s["messages"][-1]["content"] for s in seen2] == firsts


def test_judge_ties_limits_and_unreadable_replies() -> None:
    client, _ = fake_judge()
    same = [f"GOOD {i}" for i in range(8)]
    assert judge_win_rate(JUDGE, EXAMPLES, same, same, http_client=client) == 0.5

    client, seen = fake_judge(["{}", "I cannot decide."])  # every second reply unreadable
    limited = JudgeConfig(**{**JUDGE.__dict__, "max_pairs": 4})
    verdicts = judge_verdicts(limited, EXAMPLES, same, [f"x{i}" for i in range(8)], http_client=client)
    assert len(seen) == 4
    assert verdicts == ["candidate", None, "candidate", None, None, None, None, None]

    client, _ = fake_judge(["no idea"])
    with pytest.raises(TailorError) as info:
        judge_win_rate(JUDGE, EXAMPLES, same, same, http_client=client)
    assert info.value.code == "judge_unusable"

    client, _ = fake_judge(status=400)  # not retried by the SDK: fails fast
    with pytest.raises(TailorError) as info:
        judge_win_rate(JUDGE, EXAMPLES, same, same, http_client=client)
    assert info.value.status == 502 and info.value.code == "judge_failed"


# --- tiny model: adapter switching and compare() --------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(base model dir, adapter 1, adapter 2): random weights, random non-zero LoRAs."""
    root = tmp_path_factory.mktemp("tiny-eval")
    base = save_tiny_llama(root / "base", tiny_tokenizer(["question answer user assistant system"], vocab_size=300))
    adapters = []
    for i, targets in enumerate((["q_proj", "v_proj"], ["gate_proj", "down_proj"])):
        torch.manual_seed(10 + i)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        lora = LoraConfig(r=4, lora_alpha=32, target_modules=targets, init_lora_weights=False)
        get_peft_model(model, lora).save_pretrained(root / f"a{i}")
        adapters.append(root / f"a{i}")
    return base, adapters[0], adapters[1]


def test_one_load_with_two_adapters_matches_separate_loads(
    tiny_dirs: tuple[Path, Path, Path],
) -> None:
    base, a0, a1 = tiny_dirs
    prompts = [user("question"), user("a longer question about the answer")]
    examples = [EvalExample(p, "answer") for p in prompts]
    with LoadedModel(base, {"one": a0, "two": a1}) as lm:
        got = {
            name: (
                lm.generate(prompts, adapter=name, max_new_tokens=6),
                lm.nll(examples, adapter=name),
            )
            for name in ("one", "two", None)
        }
        with pytest.raises(TailorError):
            lm.generate(prompts, adapter="three")
    for name, adapter in (("one", a0), ("two", a1), (None, None)):
        # batched left-padded generation == one prompt at a time, separately loaded
        alone = [generate(base, adapter, [p], max_new_tokens=6)[0] for p in prompts]
        assert got[name][0] == alone, name
        ppl = reference_perplexity(base, adapter, examples)
        total, count = got[name][1]
        assert ppl == pytest.approx(math.exp(total / count), rel=1e-5), name
    # the adapters really differ from each other and from the base
    assert len({got[n][1][0] for n in got}) == 3


def test_compare_on_tiny_model_with_judge(tiny_dirs: tuple[Path, Path, Path]) -> None:
    base, a0, a1 = tiny_dirs
    examples = [EvalExample(user(f"question {i}"), "answer") for i in range(3)]
    client, seen = fake_judge()
    result = compare(base, a0, a1, examples, judge=JUDGE, max_new_tokens=4, http_client=client)
    assert len(seen) == 3
    assert result.candidate.n == result.baseline.n == 3
    assert result.candidate.win_rate is not None and result.baseline.win_rate is not None
    assert result.candidate.win_rate + result.baseline.win_rate == pytest.approx(1.0)
    assert result.candidate.judged == 3
    assert result.candidate.perplexity != result.baseline.perplexity
    assert [e.prompt_text for e in result.examples] == [f"User: question {i}" for i in range(3)]
    assert all(e.judge in ("candidate", "baseline", "tie") for e in result.examples)
    no_judge = compare(base, a0, None, examples, max_new_tokens=4)
    assert no_judge.candidate.win_rate is None and no_judge.baseline.win_rate is None
    with pytest.raises(TailorError):
        compare(base, a0, None, [])


# --- the real model -------------------------------------------------------------------


@real_model
def test_real_model_generates_and_prefers_the_right_reference() -> None:
    prompts = [user("What is the capital of France?"), user("Say hello in French, briefly.")]
    t0 = time.monotonic()
    with LoadedModel(REAL_MODEL) as lm:
        t1 = time.monotonic()
        answers = lm.generate(prompts, max_new_tokens=24)
        t2 = time.monotonic()
        right = lm.perplexity([EvalExample(prompts[0], "The capital of France is Paris.")])
        wrong = lm.perplexity([EvalExample(prompts[0], "Purple elephant seventeen spoon.")])
        t3 = time.monotonic()
    print(
        f"\nanswers {answers}\nperplexity right {right:.2f}, nonsense {wrong:.2f}; "
        f"load {t1 - t0:.1f} s, generate 2 {t2 - t1:.1f} s, perplexity 2 {t3 - t2:.1f} s"
    )
    assert all(a.strip() for a in answers)
    assert "paris" in answers[0].lower()
    assert right < wrong / 10, (right, wrong)
    assert 1.0 < right < 20.0
