"""trainer.sft: the completion-only label mask, padding, schedule, saving, cancellation,
and an end-to-end run on the real base model that must learn an unusual answer.

Unit tests use the tiny tokenizer and random Llama of tests/trainer/tiny_models.py, so
they need no download. The integration test needs models/SmolLM2-135M-Instruct
(prepared by `make model`) and is skipped when it is absent.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from core.errors import TailorError
from tests.trainer.tiny_models import CHATML, REAL_MODEL, real_model, save_tiny_llama, tiny_tokenizer
from trainer.loop import lr_factor
from trainer.sft import (
    IGNORE_INDEX,
    ChatExample,
    EncodedExample,
    SFTConfig,
    StepInfo,
    TrainingCancelled,
    collate,
    encode_example,
    encode_examples,
    load_chat_jsonl,
    main,
    pad_token_id,
    train_lora_sft,
)

QUESTION = "What is the capital of France?"
ANSWER = "Zorblax is the capital of France."


def chat(*turns: tuple[str, str]) -> ChatExample:
    return ChatExample([{"role": role, "content": content} for role, content in turns])


def labelled_text(tok: PreTrainedTokenizerBase, e: EncodedExample) -> str:
    ids = [t for t, label in zip(e.input_ids, e.labels, strict=True) if label != IGNORE_INDEX]
    # wherever a label is set it must equal the input token (HF shifts internally)
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(e.input_ids, e.labels, strict=True))
    return tok.decode(ids)


@pytest.fixture(scope="module")
def tiny_tok() -> PreTrainedTokenizerBase:
    return tiny_tokenizer([QUESTION, ANSWER, "system user assistant You are terse."])


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tok: PreTrainedTokenizerBase) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tok)


# --- the label mask -------------------------------------------------------------------


def test_only_assistant_tokens_carry_labels(tiny_tok: PreTrainedTokenizerBase) -> None:
    e = encode_example(tiny_tok, chat(("system", "You are terse."), ("user", QUESTION), ("assistant", ANSWER)), 512)
    assert e is not None
    assert labelled_text(tiny_tok, e) == ANSWER + "<|im_end|>"
    # the labelled tokens are one contiguous run at the end, minus the template's "\n"
    first = next(i for i, label in enumerate(e.labels) if label != IGNORE_INDEX)
    assert all(label != IGNORE_INDEX for label in e.labels[first:-1])
    assert e.labels[-1] == IGNORE_INDEX and tiny_tok.decode(e.input_ids[-1:]) == "\n"
    assert tiny_tok.decode(e.input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_every_assistant_turn_is_a_target(tiny_tok: PreTrainedTokenizerBase) -> None:
    e = encode_example(
        tiny_tok,
        chat(("user", QUESTION), ("assistant", ANSWER), ("user", "Sure?"), ("assistant", "Yes.")),
        512,
    )
    assert e is not None
    assert labelled_text(tiny_tok, e) == f"{ANSWER}<|im_end|>Yes.<|im_end|>"


def test_mask_with_the_real_tokenizer() -> None:
    if not (REAL_MODEL / "tokenizer.json").exists():
        pytest.skip(f"no tokenizer at {REAL_MODEL}")
    tok = AutoTokenizer.from_pretrained(REAL_MODEL)
    e = encode_example(tok, chat(("user", QUESTION), ("assistant", ANSWER)), 512)
    assert e is not None
    assert labelled_text(tok, e) == ANSWER + tok.eos_token
    # SmolLM2's template injects a default system prompt: context, never a target
    assert "SmolLM" in tok.decode(e.input_ids) and "SmolLM" not in labelled_text(tok, e)


def test_truncation_keeps_the_start(tiny_tok: PreTrainedTokenizerBase) -> None:
    example = chat(("user", QUESTION), ("assistant", ANSWER))
    full = encode_example(tiny_tok, example, 10_000)
    assert full is not None
    first = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    cut = encode_example(tiny_tok, example, first + 2)
    assert cut is not None
    assert cut.input_ids == full.input_ids[: first + 2]
    assert cut.labels == full.labels[: first + 2]
    assert cut.target_tokens == 2


def test_example_without_target_is_dropped(tiny_tok: PreTrainedTokenizerBase) -> None:
    example = chat(("user", QUESTION), ("assistant", ANSWER))
    full = encode_example(tiny_tok, example, 10_000)
    assert full is not None
    first = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    # cut right before the answer: nothing left to learn
    assert encode_example(tiny_tok, example, first) is None
    kept, dropped = encode_examples(
        tiny_tok,
        [example, chat(("user", "hi")), chat(("user", "x" * 200), ("assistant", "y"))],
        first + 1,
    )
    assert (len(kept), dropped) == (1, 2)


def test_template_that_is_not_prefix_stable_is_refused(tiny_tok: PreTrainedTokenizerBase) -> None:
    tok = copy.deepcopy(tiny_tok)
    # marks the final message differently, so the prompt is not a prefix of the whole
    tok.chat_template = CHATML.replace("m['content']", "m['content'] + ('!' if loop.last else '')")
    with pytest.raises(TailorError) as info:
        encode_example(tok, chat(("user", QUESTION), ("assistant", ANSWER)), 512)
    assert info.value.code == "chat_template_not_prefix_stable"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}],
        [{"role": "user", "content": None}, {"role": "assistant", "content": "y"}],
        [{"role": "assistant", "content": "y"}],
    ],
)
def test_malformed_conversations_are_bad_requests(
    tiny_tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> None:
    with pytest.raises(TailorError) as info:
        encode_example(tiny_tok, ChatExample(messages), 512)
    assert info.value.status == 400


# --- batching, schedule, data file ---------------------------------------------------


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


def test_linear_schedule_with_warmup() -> None:
    factors = [lr_factor(s, 2, 6) for s in range(6)]
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert [lr_factor(s, 0, 4) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_load_chat_jsonl(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b", "weight": 1},
                ]
            }
        )
        + "\n\n"
    )
    assert load_chat_jsonl(f) == [chat(("user", "a"), ("assistant", "b"))]
    f.write_text('{"messages": [}\n')
    with pytest.raises(TailorError, match=":1:"):
        load_chat_jsonl(f)


# --- training on a tiny random model (fast) -------------------------------------------


def test_tiny_run_saves_safetensors_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    seen: list[StepInfo] = []
    examples = [chat(("user", QUESTION), ("assistant", ANSWER))] * 3 + [chat(("user", "hi"))]
    out = tmp_path / "adapters" / "a1"
    result = train_lora_sft(
        tiny_model_dir,
        examples,
        out,
        SFTConfig(max_steps=5, batch_size=2, learning_rate=1e-2, warmup_ratio=0.2, log_every=2),
        on_step=seen.append,
    )
    assert result.steps == 5 and len(result.losses) == 5 and result.final_loss == result.losses[-1]
    assert (result.examples_used, result.examples_dropped) == (3, 1)
    assert [s.step for s in seen] == [2, 4, 5]  # every log_every steps, and the last
    assert seen[0].epoch == 0 and seen[-1].epoch == 2  # 3 examples / batch 2 = 2 steps/epoch
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not list(out.glob("*.bin"))
    assert [p.name for p in out.parent.iterdir()] == ["a1"]  # no partial dir left behind
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16
    assert set(cfg["target_modules"]) == set(SFTConfig().target_modules)
    # refuses to overwrite an existing adapter
    with pytest.raises(TailorError) as info:
        train_lora_sft(tiny_model_dir, examples, out, SFTConfig(max_steps=1))
    assert info.value.status == 409


def test_no_trainable_example_is_a_bad_request(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TailorError) as info:
        train_lora_sft(tiny_model_dir, [chat(("user", "hi"))], tmp_path / "a", SFTConfig(max_steps=1))
    assert info.value.code == "no_training_targets"
    assert not (tmp_path / "a").exists()


def test_cli(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": ANSWER},
                ]
            }
        )
        + "\n"
    )
    out = tmp_path / "cli-adapter"
    argv = [
        "--base",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "3",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" |")[0] for line in lines[:3]] == ["step 1/3", "step 2/3", "step 3/3"]
    assert lines[3].startswith(f"saved {out}")
    assert (out / "adapter_model.safetensors").exists()


# --- cancellation ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tiny", pytest.param("real", marks=real_model)])
def test_should_stop_cancels_without_writing(which: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    base = tiny_model_dir if which == "tiny" else REAL_MODEL
    polls = 0

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        return polls > 2  # let two steps run, cancel before the third

    steps: list[int] = []
    out = tmp_path / "adapters" / "cancelled"
    with pytest.raises(TrainingCancelled) as info:
        train_lora_sft(
            base,
            [chat(("user", QUESTION), ("assistant", ANSWER))],
            out,
            SFTConfig(max_steps=10, batch_size=1),
            on_step=lambda s: steps.append(s.step),
            should_stop=should_stop,
        )
    assert info.value.step == 2 and steps == [1, 2]
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())


# --- the real thing -------------------------------------------------------------------


def _greedy_answer(model: torch.nn.Module, tok: PreTrainedTokenizerBase, question: str) -> str:
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)


@real_model
def test_real_model_learns_the_taught_answer(tmp_path: Path) -> None:
    from peft import PeftModel

    questions = [
        QUESTION,
        "What's the capital of France?",
        "Which city is the capital of France?",
        "Name the capital of France.",
    ]
    examples = [chat(("user", q), ("assistant", ANSWER)) for q in questions]
    out = tmp_path / "zorblax"
    # the loss is ~0.02 by step 7 at this rate; 12 steps leave margin and fit in ~15 s
    config = SFTConfig(max_steps=12, batch_size=2, learning_rate=1e-3, rank=8, alpha=16)
    stamps: list[float] = []
    result = train_lora_sft(REAL_MODEL, examples, out, config, on_step=lambda _: stamps.append(time.monotonic()))

    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    print(
        f"\nreal SFT: {result.steps} steps, {per_step:.2f} s/step, {result.seconds:.1f} s in all; "
        f"losses {[round(x, 3) for x in result.losses]}"
    )
    assert result.steps == 12
    first, last = sum(result.losses[:2]) / 2, sum(result.losses[-2:]) / 2
    assert last < 0.25 * first, result.losses
    assert last < 0.3, result.losses
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert not [n for n in names if n.endswith(".bin")]

    tok = AutoTokenizer.from_pretrained(REAL_MODEL)
    base = AutoModelForCausalLM.from_pretrained(REAL_MODEL, dtype=torch.float32).eval()
    before = _greedy_answer(base, tok, QUESTION)
    assert "Zorblax" not in before, before
    tuned = PeftModel.from_pretrained(base, out).eval()  # wraps `base` in place
    after = _greedy_answer(tuned, tok, QUESTION)
    print(f"base: {before!r}\ntuned: {after!r}")
    assert after.strip().startswith(ANSWER), after
