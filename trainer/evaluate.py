"""Evaluate a base model, or base + LoRA adapter, on held-out examples; compare two.

Metrics, per model:
  exact_match  share of greedy answers equal to the reference after SQuAD normalisation
  token_f1     mean SQuAD token-overlap F1 between answer and reference
  perplexity   exp(mean NLL per token) of the REFERENCE answers given their prompts:
               how likely the model finds the right answer, even when it would not
               generate it verbatim (lower is better)
  win_rate     share of pairwise comparisons an LLM judge gives to this model's answer
               over the other model's (ties count 0.5); only with a JudgeConfig
  grader_score a reinforcement job's grader, mean over the validation prompts' answers
               (instead of the reference metrics: such prompts have no reference answer)

The answers and perplexities come from a vLLM engine (trainer.compute.evaluation: what is
evaluated is what will be served); this module scores them and asks the judge, and needs
no torch:

    from trainer.evaluate import EvalExample, Side, compare
    cmp = compare(examples, Side(candidate_answers, 3.1), Side(baseline_answers, 4.7), judge=None)
    print(cmp.candidate, cmp.baseline)
"""

from __future__ import annotations

import logging
import random
import re
import statistics
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx

from core.errors import TailorError, bad_request

log = logging.getLogger("tailor.trainer")

# -----------------------------------------------------------------------------
# data types


@dataclass
class EvalExample:
    """A held-out prompt (ending with a user turn) and the answer we want."""

    messages: list[dict[str, str]]
    reference: str


Verdict = Literal["candidate", "baseline", "tie"]


@dataclass
class ExampleResult:
    prompt_text: str
    reference: str
    candidate_output: str
    baseline_output: str
    candidate_f1: float = 0.0
    baseline_f1: float = 0.0
    candidate_exact: bool = False
    baseline_exact: bool = False
    judge: Verdict | None = None  # None: not judged, or the judge's reply was unreadable


@dataclass
class Metrics:
    n: int
    exact_match: float
    token_f1: float
    perplexity: float
    win_rate: float | None  # None when no judge was configured
    judged: int = 0  # pairs with a usable judge verdict behind win_rate
    # A reinforcement job's evaluation: the grader's mean score on the validation prompts.
    # There are no reference answers then: exact_match and token_f1 are 0, perplexity NaN.
    grader_score: float | None = None


@dataclass(frozen=True)
class Served:
    """What the candidate's held-out answers cost to serve: the median wall-clock seconds per
    request on the evaluation engine and the mean tokens per request (from the engine's usage)."""

    p50_latency_s: float
    mean_prompt_tokens: float
    mean_completion_tokens: float

    @classmethod
    def measure(
        cls, seconds: Sequence[float], prompt_tokens: Sequence[int], completion_tokens: Sequence[int]
    ) -> Served:
        n = max(1, len(seconds))
        return cls(
            p50_latency_s=statistics.median(seconds) if seconds else 0.0,
            mean_prompt_tokens=sum(prompt_tokens) / n,
            mean_completion_tokens=sum(completion_tokens) / n,
        )


@dataclass
class Comparison:
    candidate: Metrics
    baseline: Metrics
    examples: list[ExampleResult] = field(default_factory=list)
    # How the candidate's answers were served (None where not measured, e.g. a graded evaluation).
    served: Served | None = None


# -----------------------------------------------------------------------------
# text metrics (pure)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and English articles, squash spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall on normalised whitespace tokens.

    Two empty strings agree perfectly (1.0); one empty side scores 0.
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def render_conversation(messages: Sequence[dict[str, str]]) -> str:
    """'User: ...' lines: for the judge's prompt and for reports."""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


# -----------------------------------------------------------------------------
# pairwise judge


@dataclass
class JudgeConfig:
    base_url: str  # any OpenAI-compatible endpoint, e.g. "http://host:8000/v1"
    api_key: str
    model: str
    # Judge calls cost time and money; the first max_pairs examples are judged (held-out
    # sets are shuffled upstream, so the first N are a fair sample).
    max_pairs: int = 50
    # Seeds which answer is shown as "A": each item gets a coin flip, so a judge that
    # favours the first position helps both sides equally, and reruns agree.
    seed: int = 0
    # Room for a short justification before the verdict; parsing copes with either.
    max_tokens: int = 256
    timeout_s: float = 60.0


JUDGE_SYSTEM = (
    "You are an impartial judge. You are shown a conversation, a reference answer and two "
    "candidate answers, A and B, to the last user message. Decide which candidate answers "
    "better: correct and consistent with the reference, helpful, and concise. Do not let "
    "the order of the answers or their length influence you. Reply with exactly one of: "
    "A, B, TIE."
)


def judge_prompt(example: EvalExample, answer_a: str, answer_b: str) -> str:
    return (
        f"[Conversation]\n{render_conversation(example.messages)}\n\n"
        f"[Reference answer]\n{example.reference}\n\n"
        f"[Answer A]\n{answer_a}\n\n"
        f"[Answer B]\n{answer_b}\n\n"
        "Which answer is better? Reply with A, B or TIE."
    )


_DECOR = r"[\s*_`'\"(\[]*"
_TIE_WORDS = {"TIE": "TIE", "TIED": "TIE", "DRAW": "TIE", "EQUAL": "TIE", "NEITHER": "TIE"}


def parse_verdict(text: str | None) -> Literal["A", "B", "TIE"] | None:
    """Read a judge's reply: "A", "**B**", "[[A]]", "Tie.", "B. Because ...",
    "Verdict: A", "The better answer is B", "Answer A is better". None if unreadable.

    A bare "A" is taken only as the whole reply or its first word followed by
    punctuation or a line break, so a reply starting "A good answer..." is not an A vote.
    """
    if not text:
        return None
    t = text.strip()
    if m := re.search(r"\[\[\s*(A|B|TIE)\s*\]\]", t, re.I):  # MT-bench style
        return _canon(m.group(1))
    words = "A|B|TIE|TIED|DRAW|EQUAL|NEITHER"
    if m := re.fullmatch(rf"{_DECOR}(?:answer\s+|option\s+)?({words}){_DECOR}[\s*_`'\".)\]!]*", t, re.I):
        return _canon(m.group(1))
    if m := re.match(rf"{_DECOR}(?:answer\s+)?(A|B|TIE)\b[*_`'\")\]]*\s*(?:[.:,;\-\n]|$)", t):
        return _canon(m.group(1))
    # The letters A/B stay case-sensitive even where the words around them are not:
    # "I prefer a short answer" is no vote.
    keyword = (
        r"(?:verdict|winner|better answer|best answer|final answer|answer\s*:|choice|prefer)"
        rf"\s*(?:is|:|=)?\s*{_DECOR}(?:answer\s+|option\s+)?((?-i:A|B)|tie)\b"
    )
    if found := re.findall(keyword, t, re.I):
        return _canon(found[-1])  # the last statement is the conclusion
    better = r"(?:\banswer\s+|^\W*)((?-i:A|B))\s+is\s+(?:the\s+)?(?:better|superior|preferred)"
    if found := set(re.findall(better, t, re.I | re.M)):
        return _canon(found.pop()) if len(found) == 1 else None
    if re.search(r"\b(?:it'?s a tie|equally good|equally bad|both (?:are )?equally)\b", t, re.I):
        return "TIE"
    return None


def _canon(word: str) -> Literal["A", "B", "TIE"]:
    w = word.upper()
    return "TIE" if w in _TIE_WORDS else ("A" if w == "A" else "B")


def judge_verdicts(
    judge: JudgeConfig,
    examples: Sequence[EvalExample],
    candidate_outputs: Sequence[str],
    baseline_outputs: Sequence[str],
    *,
    http_client: httpx.Client | None = None,
) -> list[Verdict | None]:
    """Ask the judge about the first max_pairs examples; one verdict per example.

    None for examples not judged (beyond max_pairs) or whose reply was unreadable.
    A failing request (after the SDK's retries) raises TailorError 502: a half-judged
    set would skew the win rate.
    """
    import openai  # only needed when a judge is configured

    if not len(examples) == len(candidate_outputs) == len(baseline_outputs):
        raise bad_request("examples, candidate and baseline outputs differ in length")
    client = openai.OpenAI(
        base_url=judge.base_url,
        api_key=judge.api_key or "none",  # local servers often want no key; the SDK wants one
        timeout=judge.timeout_s,
        max_retries=2,
        http_client=http_client,
    )
    rng = random.Random(judge.seed)
    verdicts: list[Verdict | None] = [None] * len(examples)
    for i in range(min(judge.max_pairs, len(examples))):
        candidate_first = rng.random() < 0.5
        a, b = (
            (candidate_outputs[i], baseline_outputs[i])
            if candidate_first
            else (baseline_outputs[i], candidate_outputs[i])
        )
        try:
            reply = client.chat.completions.create(
                model=judge.model,
                messages=[
                    {"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": judge_prompt(examples[i], a, b)},
                ],
                temperature=0.0,
                max_tokens=judge.max_tokens,
            )
        except openai.OpenAIError as e:
            # The judge is the operator's: its answer can name its URL or echo part of its key
            # ("Incorrect API key provided: sk-...") and stays in the worker's log, out of the
            # job's error, which the tenant reads.
            log.error("the judge request to %s failed: %s", judge.base_url, e)
            status = getattr(e, "status_code", None)
            detail = f"{type(e).__name__}" + (f", status {status}" if status else "")
            message = f"the judge request failed ({detail}); the worker's log has the judge's answer"
            raise TailorError(502, message, code="judge_failed") from e
        text = reply.choices[0].message.content if reply.choices else None
        verdict = parse_verdict(text)
        if verdict == "TIE":
            verdicts[i] = "tie"
        elif verdict is not None:
            verdicts[i] = "candidate" if (verdict == "A") == candidate_first else "baseline"
    return verdicts


def win_rate_of(verdicts: Sequence[Verdict | None]) -> tuple[float, int]:
    """(candidate win rate with ties as 0.5, number of usable verdicts)."""
    usable = [v for v in verdicts if v is not None]
    if not usable:
        raise TailorError(502, "the judge gave no readable verdict (expected A, B or TIE)", code="judge_unusable")
    score = sum(1.0 if v == "candidate" else 0.5 if v == "tie" else 0.0 for v in usable)
    return score / len(usable), len(usable)


def judge_win_rate(
    judge: JudgeConfig,
    examples: Sequence[EvalExample],
    candidate_outputs: Sequence[str],
    baseline_outputs: Sequence[str],
    *,
    http_client: httpx.Client | None = None,
) -> float:
    """Share of judged pairs the candidate wins (ties 0.5); unreadable replies are left out."""
    verdicts = judge_verdicts(judge, examples, candidate_outputs, baseline_outputs, http_client=http_client)
    return win_rate_of(verdicts)[0]


# -----------------------------------------------------------------------------
# candidate vs baseline


def _metrics(results: Sequence[ExampleResult], side: str, perplexity: float, win: float | None, judged: int) -> Metrics:
    n = len(results)
    return Metrics(
        n=n,
        exact_match=sum(getattr(r, f"{side}_exact") for r in results) / n,
        token_f1=sum(getattr(r, f"{side}_f1") for r in results) / n,
        perplexity=perplexity,
        win_rate=win,
        judged=judged,
    )


@dataclass
class Side:
    """What one model did on the held-out examples: its answers and its reference perplexity."""

    outputs: list[str]
    perplexity: float
    served: Served | None = None


def compare(
    examples: Sequence[EvalExample],
    candidate: Side,
    baseline: Side,
    *,
    judge: JudgeConfig | None = None,
    http_client: httpx.Client | None = None,
) -> Comparison:
    """Score candidate and baseline on the same examples (their answers come from the engine).

    The judge's win rate of the candidate over the baseline is stored on the candidate;
    the baseline gets 1 - that.
    """
    if not examples:
        raise bad_request("no evaluation examples", code="no_eval_examples")
    cand_out, base_out = candidate.outputs, baseline.outputs
    results = [
        ExampleResult(
            prompt_text=render_conversation(e.messages),
            reference=e.reference,
            candidate_output=c,
            baseline_output=b,
            candidate_f1=token_f1(c, e.reference),
            baseline_f1=token_f1(b, e.reference),
            candidate_exact=bool(exact_match(c, e.reference)),
            baseline_exact=bool(exact_match(b, e.reference)),
        )
        for e, c, b in zip(examples, cand_out, base_out, strict=True)
    ]
    win: float | None = None
    judged = 0
    if judge is not None:
        verdicts = judge_verdicts(judge, examples, cand_out, base_out, http_client=http_client)
        for r, v in zip(results, verdicts, strict=True):
            r.judge = v
        win, judged = win_rate_of(verdicts)
    return Comparison(
        candidate=_metrics(results, "candidate", candidate.perplexity, win, judged),
        baseline=_metrics(results, "baseline", baseline.perplexity, None if win is None else 1 - win, judged),
        examples=results,
        served=candidate.served,
    )
