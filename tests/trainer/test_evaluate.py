"""trainer.evaluate: text metrics, judge verdict parsing and win rate against a fake
OpenAI-compatible judge (httpx.MockTransport), and compare() on given answers.

Generation and perplexity on a real vLLM engine: tests/integration/test_evaluation_live.py.
"""

from __future__ import annotations

import json

import httpx
import pytest

from core.errors import TailorError
from tests.trainer.tiny_models import user
from trainer.evaluate import (
    EvalExample,
    JudgeConfig,
    Side,
    compare,
    exact_match,
    judge_verdicts,
    judge_win_rate,
    normalize_answer,
    parse_verdict,
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


def fake_judge(
    replies: list[str] | None = None, status: int = 200, error: str = "nope"
) -> tuple[httpx.Client, list[dict]]:
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
            return httpx.Response(status, json={"error": {"message": error, "type": "x"}})
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

    # Not retried by the SDK: fails fast. The judge's words (here echoing part of its key) are
    # the operator's: the log has them, the job's error does not.
    client, _ = fake_judge(status=401, error="Incorrect API key provided: sk-ju***ge")
    with pytest.raises(TailorError) as info:
        judge_win_rate(JUDGE, EXAMPLES, same, same, http_client=client)
    assert info.value.status == 502 and info.value.code == "judge_failed"
    assert "401" in info.value.message and "sk-ju" not in info.value.message
    assert JUDGE.base_url not in info.value.message


# --- compare() ------------------------------------------------------------------------


def test_compare_scores_both_sides_and_splits_the_judges_win_rate() -> None:
    examples = [EvalExample(user(f"question {i}"), f"answer {i}") for i in range(4)]
    candidate = Side(["answer 0", "GOOD answer 1", "Answer 2.", "wrong"], perplexity=2.5)
    baseline = Side(["nope", "nope", "answer 2", "answer"], perplexity=7.0)
    client, seen = fake_judge()
    result = compare(examples, candidate, baseline, judge=JUDGE, http_client=client)
    c, b = result.candidate, result.baseline
    assert (c.n, c.exact_match, b.exact_match) == (4, 0.5, 0.25)
    assert c.token_f1 == pytest.approx((1 + 0.8 + 1 + 0) / 4)
    assert (c.perplexity, b.perplexity) == (2.5, 7.0)
    assert len(seen) == 4 and c.judged == b.judged == 4
    # the judge prefers the one answer with GOOD in it and ties the rest
    assert c.win_rate == pytest.approx((1 + 3 * 0.5) / 4) and c.win_rate + b.win_rate == pytest.approx(1.0)
    assert [e.prompt_text for e in result.examples] == [f"User: question {i}" for i in range(4)]
    assert [e.candidate_exact for e in result.examples] == [True, False, True, False]

    no_judge = compare(examples, candidate, baseline)
    assert no_judge.candidate.win_rate is None and no_judge.baseline.win_rate is None
    with pytest.raises(TailorError):
        compare([], Side([], 1.0), Side([], 1.0))
    with pytest.raises(ValueError):  # an answer missing is a bug upstream, never a silent zip
        compare(examples, Side(["x"], 1.0), baseline)
