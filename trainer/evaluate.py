"""Evaluate a base model, or base + LoRA adapter, on held-out examples; compare two.

Metrics, per model:
  exact_match  share of greedy answers equal to the reference after SQuAD normalisation
  token_f1     mean SQuAD token-overlap F1 between answer and reference
  perplexity   exp(mean NLL per token) of the REFERENCE answers given their prompts:
               how likely the model finds the right answer, even when it would not
               generate it verbatim (lower is better)
  win_rate     share of pairwise comparisons an LLM judge gives to this model's answer
               over the other model's (ties count 0.5); only with a JudgeConfig

Usage from Python (the trainer calls `compare` after training a candidate adapter):

    from trainer.evaluate import EvalExample, JudgeConfig, compare
    cmp = compare(Path("models/SmolLM2-135M-Instruct"), Path("adapters/new"),
                  Path("adapters/current"),   # or None: the bare base model is the baseline
                  [EvalExample([{"role": "user", "content": "Capital of France?"}], "Paris")],
                  judge=JudgeConfig("http://127.0.0.1:8000/v1", "sk-...", "some-model"))
    print(cmp.candidate, cmp.baseline)

How models are loaded: ONE copy of the base weights (float32) with both adapters
attached under the names "candidate" and "baseline"; `set_adapter` switches between
them and `disable_adapter()` gives the bare base model. That halves load time and
memory against two full loads, and peft applies only the active adapter, so results
equal a separately loaded PeftModel.
"""

from __future__ import annotations

import gc
import math
import random
import re
import string
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from core.errors import TailorError, bad_request, not_found
from trainer.compute.encoding import IGNORE_INDEX, collate, encode_completion, pad_token_id, render, validate_prompt

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


@dataclass
class Comparison:
    candidate: Metrics
    baseline: Metrics
    examples: list[ExampleResult] = field(default_factory=list)


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
# a loaded model


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(token) over each row's labelled tokens: shape [rows].

    Logits at position t predict token t + 1, hence the shift. Cross-entropy with
    reduction="none" gives 0 at ignored positions, so a plain sum is the masked sum.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), batch["labels"][:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )
    return -nll.sum(dim=-1)


class LoadedModel:
    """The base model in float32 with any number of named LoRA adapters attached.

    Every method takes `adapter=`: one of the names given at load time, or None for the
    bare base model. Use as a context manager (or call close()) to free the weights.
    """

    def __init__(self, model_dir: Path, adapters: Mapping[str, Path] | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.adapters = dict(adapters or {})
        for name, path in self.adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise not_found(f"no adapter {name!r} at {path} (adapter_config.json missing)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.pad_id = pad_token_id(self.tokenizer)
        model: Any = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        for i, (name, path) in enumerate(self.adapters.items()):
            if i == 0:
                model = PeftModel.from_pretrained(model, path, adapter_name=name)
            else:
                model.load_adapter(path, adapter_name=name)
        self.model = model.eval()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.model = None
        gc.collect()

    @contextmanager
    def _active(self, adapter: str | None) -> Iterator[None]:
        if adapter is None:
            # a PeftModel with its adapters switched off is exactly the base model
            ctx = self.model.disable_adapter() if isinstance(self.model, PeftModel) else nullcontext()
            with ctx, torch.no_grad():
                yield
            return
        if adapter not in self.adapters:
            raise not_found(f"no adapter named {adapter!r} is loaded")
        self.model.set_adapter(adapter, inference_mode=True)
        with torch.no_grad():
            yield

    def generate(
        self,
        prompts: Sequence[Sequence[dict[str, str]]],
        *,
        adapter: str | None = None,
        max_new_tokens: int = 64,
        batch_size: int = 8,
    ) -> list[str]:
        """Greedy answers, one per prompt, special tokens stripped.

        Batched with left padding (decoder-only models continue from the last position,
        so padding must go in front); prompts are sorted by length first so a batch
        wastes little on padding, and answers come back in the input order.
        """
        tok = self.tokenizer
        encoded = []
        for prompt in prompts:
            validate_prompt(prompt)
            encoded.append(render(tok, prompt, add_generation_prompt=True))
        gen_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=tok.eos_token_id,
        )
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        answers = [""] * len(encoded)
        with self._active(adapter):
            for first in range(0, len(order), batch_size):
                idx = order[first : first + batch_size]
                width = max(len(encoded[i]) for i in idx)
                input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    n = len(encoded[i])
                    input_ids[row, width - n :] = torch.tensor(encoded[i], dtype=torch.long)
                    attention_mask[row, width - n :] = 1
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config
                )
                for row, i in enumerate(idx):
                    answers[i] = tok.decode(out[row, width:], skip_special_tokens=True).strip()
        return answers

    def nll(
        self,
        examples: Sequence[EvalExample],
        *,
        adapter: str | None = None,
        batch_size: int = 8,
        max_seq_len: int = 2048,
    ) -> tuple[float, int]:
        """(summed negative log-likelihood, token count) of the reference answers.

        Tokens are those SFT trains on (trainer.compute.encoding): the answer's content and its closing
        end-of-turn token (producing it is part of answering right). Examples whose answer
        is cut off entirely by max_seq_len are skipped.
        """
        encoded = [
            e
            for e in (encode_completion(self.tokenizer, ex.messages, ex.reference, max_seq_len) for ex in examples)
            if e is not None
        ]
        total, count = 0.0, 0
        with self._active(adapter):
            for first in range(0, len(encoded), batch_size):
                batch = collate(encoded[first : first + batch_size], self.pad_id)
                total -= sequence_logps(self.model, batch).sum().item()
                count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum().item())
        return total, count

    def perplexity(self, examples: Sequence[EvalExample], *, adapter: str | None = None, batch_size: int = 8) -> float:
        """exp(mean NLL per reference-answer token), pooled over all examples."""
        total, count = self.nll(examples, adapter=adapter, batch_size=batch_size)
        if count == 0:
            raise bad_request("no reference answer token to score", code="no_eval_targets")
        return math.exp(total / count)


def _single(model_dir: Path, adapter_dir: Path | None) -> tuple[LoadedModel, str | None]:
    if adapter_dir is None:
        return LoadedModel(model_dir), None
    return LoadedModel(model_dir, {"adapter": adapter_dir}), "adapter"


def generate(
    model_dir: Path,
    adapter_dir: Path | None,
    prompts: Sequence[Sequence[dict[str, str]]],
    max_new_tokens: int = 64,
) -> list[str]:
    """Load, answer greedily, free. Use LoadedModel to do more with one load."""
    lm, name = _single(model_dir, adapter_dir)
    with lm:
        return lm.generate(prompts, adapter=name, max_new_tokens=max_new_tokens)


def reference_perplexity(model_dir: Path, adapter_dir: Path | None, examples: Sequence[EvalExample]) -> float:
    lm, name = _single(model_dir, adapter_dir)
    with lm:
        return lm.perplexity(examples, adapter=name)


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
            raise TailorError(502, f"the judge request failed: {e}", code="judge_failed") from e
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


def compare(
    base_model_dir: Path,
    candidate_adapter_dir: Path | None,
    baseline_adapter_dir: Path | None,
    examples: Sequence[EvalExample],
    *,
    judge: JudgeConfig | None = None,
    max_new_tokens: int = 64,
    http_client: httpx.Client | None = None,
) -> Comparison:
    """Evaluate candidate and baseline (None = the bare base model) on the same examples.

    The judge's win rate of the candidate over the baseline is stored on the candidate;
    the baseline gets 1 - that.
    """
    if not examples:
        raise bad_request("no evaluation examples", code="no_eval_examples")
    adapters: dict[str, Path] = {}
    if candidate_adapter_dir is not None:
        adapters["candidate"] = Path(candidate_adapter_dir)
    if baseline_adapter_dir is not None:
        adapters["baseline"] = Path(baseline_adapter_dir)
    cand_name = "candidate" if candidate_adapter_dir is not None else None
    base_name = "baseline" if baseline_adapter_dir is not None else None

    prompts = [e.messages for e in examples]
    with LoadedModel(base_model_dir, adapters) as lm:
        cand_out = lm.generate(prompts, adapter=cand_name, max_new_tokens=max_new_tokens)
        base_out = lm.generate(prompts, adapter=base_name, max_new_tokens=max_new_tokens)
        cand_ppl = lm.perplexity(examples, adapter=cand_name)
        base_ppl = lm.perplexity(examples, adapter=base_name)

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
        candidate=_metrics(results, "candidate", cand_ppl, win, judged),
        baseline=_metrics(results, "baseline", base_ppl, None if win is None else 1 - win, judged),
        examples=results,
    )
