"""trainer.compute.encoding: the assistant-only loss mask, truncation, validation, collate.

On the tiny ChatML tokenizer of tests/trainer/tiny_models.py (no download); one test reads
the real base model's tokenizer and is skipped without it.
"""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.errors import TailorError
from tests.trainer.tiny_models import REAL_MODEL, real_model, user
from trainer.compute.encoding import (
    IGNORE_INDEX,
    EncodedExample,
    collate,
    encode_completion,
    encode_conversation,
    pad_token_id,
    validate_prompt,
)
from trainer.compute.recipe import Recipe
from trainer.compute.synthetic import CHATML

QUESTION = "What is the capital of France?"
ANSWER = "Zorblax is the capital of France."  # in the tiny tokenizer's corpus (conftest.py)


def chat(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


def labelled_text(tok: PreTrainedTokenizerBase, e: EncodedExample) -> str:
    # wherever a label is set it must equal the input token (HF models shift internally)
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(e.input_ids, e.labels, strict=True))
    return tok.decode([t for t, label in zip(e.input_ids, e.labels, strict=True) if label != IGNORE_INDEX])


def first_target(e: EncodedExample) -> int:
    return next(i for i, label in enumerate(e.labels) if label != IGNORE_INDEX)


# --- conversations (SFT) --------------------------------------------------------------


def test_only_assistant_tokens_carry_labels(tiny_tok: PreTrainedTokenizerBase) -> None:
    e = encode_conversation(
        tiny_tok, chat(("system", "You are terse."), ("user", QUESTION), ("assistant", ANSWER)), 512
    )
    assert e is not None
    assert labelled_text(tiny_tok, e) == ANSWER + "<|im_end|>"
    # one contiguous run at the end, minus the template's trailing "\n" (scaffolding)
    first = first_target(e)
    assert all(label != IGNORE_INDEX for label in e.labels[first:-1])
    assert e.labels[-1] == IGNORE_INDEX and tiny_tok.decode(e.input_ids[-1:]) == "\n"
    assert tiny_tok.decode(e.input_ids[:first]).endswith("<|im_start|>assistant\n")
    assert e.assistant_mask == [0 if label == IGNORE_INDEX else 1 for label in e.labels]
    assert e.target_tokens == sum(e.assistant_mask)


def test_every_assistant_turn_is_a_target(tiny_tok: PreTrainedTokenizerBase) -> None:
    e = encode_conversation(
        tiny_tok, chat(("user", QUESTION), ("assistant", ANSWER), ("user", "Sure?"), ("assistant", "Yes.")), 512
    )
    assert e is not None
    assert labelled_text(tiny_tok, e) == f"{ANSWER}<|im_end|>Yes.<|im_end|>"


@real_model
def test_mask_with_the_real_tokenizer() -> None:
    tok = AutoTokenizer.from_pretrained(REAL_MODEL)
    e = encode_conversation(tok, chat(("user", QUESTION), ("assistant", ANSWER)), 512)
    assert e is not None
    assert labelled_text(tok, e) == ANSWER + tok.eos_token
    # SmolLM2's template injects a default system prompt: context, never a target
    assert "SmolLM" in tok.decode(e.input_ids) and "SmolLM" not in labelled_text(tok, e)


def test_truncation_keeps_the_start(tiny_tok: PreTrainedTokenizerBase) -> None:
    example = chat(("user", QUESTION), ("assistant", ANSWER))
    full = encode_conversation(tiny_tok, example, 10_000)
    assert full is not None
    first = first_target(full)
    cut = encode_conversation(tiny_tok, example, first + 2)
    assert cut is not None
    assert cut.input_ids == full.input_ids[: first + 2]
    assert cut.labels == full.labels[: first + 2]
    assert cut.target_tokens == 2


def test_example_without_target_is_dropped(tiny_tok: PreTrainedTokenizerBase) -> None:
    from trainer.compute import sft  # imports TRL: only where the dataset is built

    example = chat(("user", QUESTION), ("assistant", ANSWER))
    full = encode_conversation(tiny_tok, example, 10_000)
    assert full is not None
    first = first_target(full)
    # cut right before the answer: nothing left to learn
    assert encode_conversation(tiny_tok, example, first) is None
    assert encode_conversation(tiny_tok, chat(("user", "hi")), 512) is None  # no assistant turn at all
    rows = [{"messages": m} for m in (example, chat(("user", "hi")), chat(("user", "x" * 200), ("assistant", "y")))]
    recipe = Recipe("sft", "unused", "unused", "unused", "unused", "unused", max_seq_length=first + 1)
    dataset, dropped = sft.build_dataset(tiny_tok, rows, recipe)
    assert (len(dataset), dropped) == (1, 2)
    assert dataset[0]["input_ids"] == full.input_ids[: first + 1]
    assert dataset[0]["assistant_masks"] == full.assistant_mask[: first + 1]


def test_template_that_is_not_prefix_stable_is_refused(tiny_tok: PreTrainedTokenizerBase) -> None:
    tok = copy.deepcopy(tiny_tok)
    # marks the final message differently, so the prompt is not a prefix of the whole
    tok.chat_template = CHATML.replace("m['content']", "m['content'] + ('!' if loop.last else '')")
    with pytest.raises(TailorError) as info:
        encode_conversation(tok, chat(("user", QUESTION), ("assistant", ANSWER)), 512)
    assert info.value.status == 500 and info.value.code == "chat_template_not_prefix_stable"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}],
        [{"role": "user", "content": None}, {"role": "assistant", "content": "y"}],
        [{"role": "assistant", "content": "y"}],
    ],
    ids=["empty", "unknown-role", "no-content", "starts-with-assistant"],
)
def test_malformed_conversations_are_bad_requests(
    tiny_tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> None:
    with pytest.raises(TailorError) as info:
        encode_conversation(tiny_tok, messages, 512)
    assert info.value.status == 400


# --- prompt + completion (DPO, KTO, evaluation) ---------------------------------------


def test_only_the_final_answer_is_labelled(tiny_tok: PreTrainedTokenizerBase) -> None:
    prompt = chat(("user", "hi"), ("assistant", "hello"), ("user", QUESTION))  # earlier turn: context only
    e = encode_completion(tiny_tok, prompt, "Paris is.", 512)
    assert e is not None
    assert labelled_text(tiny_tok, e) == "Paris is.<|im_end|>"
    # truncation that eats the whole answer drops the example
    assert encode_completion(tiny_tok, prompt, "Paris is.", first_target(e)) is None
    # ... and truncation inside it keeps the start
    cut = encode_completion(tiny_tok, prompt, "Paris is.", first_target(e) + 1)
    assert cut is not None and cut.target_tokens == 1


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        ([], "non-empty"),
        ("What?", "non-empty"),
        (chat(("assistant", "x")), "end with a user"),
        (chat(("user", "q"), ("assistant", "a")), "end with a user"),
    ],
    ids=["empty", "a-string", "assistant-only", "ends-with-assistant"],
)
def test_prompt_validation(tiny_tok: PreTrainedTokenizerBase, prompt: object, match: str) -> None:
    with pytest.raises(TailorError, match=match) as info:
        validate_prompt(prompt)  # type: ignore[arg-type]
    assert info.value.status == 400
    with pytest.raises(TailorError, match=match):
        encode_completion(tiny_tok, prompt, "y", 512)  # type: ignore[arg-type]


def test_completion_must_be_a_string(tiny_tok: PreTrainedTokenizerBase) -> None:
    with pytest.raises(TailorError) as info:
        encode_completion(tiny_tok, user(QUESTION), None, 512)  # type: ignore[arg-type]
    assert info.value.status == 400


# --- batching -------------------------------------------------------------------------


def test_collate_right_pads_and_masks(tiny_tok: PreTrainedTokenizerBase) -> None:
    assert tiny_tok.pad_token_id is None
    pad = pad_token_id(tiny_tok)
    assert pad == tiny_tok.eos_token_id  # falls back to eos
    a = EncodedExample([5, 6, 7], [IGNORE_INDEX, 6, 7])
    b = EncodedExample([8], [8])
    batch = collate([a, b], pad)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
