"""The text_similarity grader's metrics, as OpenAI's graders guide names them.

- fuzzy_match: RapidFuzz's WRatio on both texts after its default processing (lower case,
  non-alphanumerics as spaces, trimmed), scaled to 0..1.
- bleu, gleu: NLTK's sentence BLEU (4-gram, equal weights) and Google-BLEU, on whitespace tokens.
- meteor: NLTK's METEOR on whitespace tokens, with exact and Porter-stem matches; the WordNet
  synonym stage is left out, because WordNet is a separate download this server never makes.
- rouge_1 .. rouge_5, rouge_l: the `rouge-score` package's F-measure (rouge1..rouge5, rougeL).
- cosine: needs an embeddings model; refused before grading when none is configured
  (trainer.graders.spec).

Each is 0.0 when either text is empty (nothing to compare). Some are quadratic in the text
(RapidFuzz's partial ratios in WRatio, ROUGE-L's longest common subsequence), so each metric
compares at most MAX_CHARS[metric] characters of either text: longer is TooLarge, which the
grade reports as `truncated_observation_error`. The caller runs `score` off the event loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache
from typing import Any

from trainer.graders.spec import TextSimilarityGrader
from trainer.graders.templates import TooLarge

ROUGE_TYPES = {f"rouge_{n}": f"rouge{n}" for n in range(1, 6)} | {"rouge_l": "rougeL"}
# About a tenth of a second or less per grade at the cap, on one core.
LINEAR_MAX_CHARS = 100_000
MAX_CHARS = {"fuzzy_match": 2_000, "rouge_l": 4_000}


class _NoSynonyms:
    """Stands in for WordNet in NLTK's METEOR: no synonym matches, and nothing to download."""

    def synsets(self, *_args: Any, **_kwargs: Any) -> list[Any]:
        return []


def _fuzzy(text: str, reference: str) -> float:
    from rapidfuzz import fuzz, utils

    return float(fuzz.WRatio(text, reference, processor=utils.default_process)) / 100.0


def _bleu(text: str, reference: str) -> float:
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():  # NLTK warns when a higher n-gram order has no overlap
        warnings.simplefilter("ignore")
        return float(sentence_bleu([reference.split()], text.split()))


def _gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference.split()], text.split()))


def _meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([reference.split()], text.split(), wordnet=_NoSynonyms()))


@cache
def _rouge_scorer(rouge_type: str) -> Any:
    """A scorer of this one type: one that knows all six computes ROUGE-L's LCS on every call."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([rouge_type])


def _rouge(metric: str) -> Callable[[str, str], float]:
    def score(text: str, reference: str) -> float:
        rouge_type = ROUGE_TYPES[metric]
        return float(_rouge_scorer(rouge_type).score(reference, text)[rouge_type].fmeasure)

    return score


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": _fuzzy,
    "bleu": _bleu,
    "gleu": _gleu,
    "meteor": _meteor,
    **{name: _rouge(name) for name in ROUGE_TYPES},
}


def score(grader: TextSimilarityGrader, text: str, reference: str) -> float:
    metric = grader.evaluation_metric
    limit = MAX_CHARS.get(metric, LINEAR_MAX_CHARS)
    if len(text) > limit or len(reference) > limit:
        raise TooLarge(f"a text compared by {metric}", limit)
    if not text.strip() or not reference.strip():
        return 0.0
    return METRICS[metric](text, reference)
