"""The tiny tokenizer and random Llama every trainer.compute test shares, and no Hub.

Built from tests/trainer/tiny_models.py's builders (no download, seconds). The fixtures are
defined here rather than imported from tests/trainer/test_sft.py or test_dpo.py: those
modules test the old training loop and import it, and go away with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from tests.trainer.tiny_models import save_tiny_llama, tiny_tokenizer

QUESTION = "What is the capital of France?"
ANSWER = "Zorblax is the capital of France."
CORPUS = [QUESTION, ANSWER, "system user assistant You are terse.", "Paris is. Berlin is. QUEUE-7 no idea"]


@pytest.fixture(scope="session")
def tiny_tok() -> PreTrainedTokenizerBase:
    return tiny_tokenizer(CORPUS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tok: PreTrainedTokenizerBase) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tok)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training processes inherit this: a missing model dir must never become a Hub download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
