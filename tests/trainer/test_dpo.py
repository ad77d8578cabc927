"""trainer.dpo: answer-only label mask, the DPO loss, data parsing, saving, cancellation,
the init adapter as reference, and a real run that must prefer the chosen answers.

Fast tests use the tiny tokenizer and random Llama of tests/trainer/tiny_models.py. The
real-model test needs models/SmolLM2-135M-Instruct and is skipped without it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from core.errors import TailorError
from tests.trainer.tiny_models import REAL_MODEL, real_model, save_tiny_llama, tiny_tokenizer, user
from trainer.dpo import (
    DPOConfig,
    DPOStepInfo,
    PreferenceExample,
    _pair_batch,
    dpo_loss,
    encode_completion,
    encode_pairs,
    load_preference_jsonl,
    parse_preference_record,
    sequence_logps,
    train_lora_dpo,
)
from trainer.sft import IGNORE_INDEX, StepInfo, TrainingCancelled, pad_token_id

Q = "What is the capital of France?"


@pytest.fixture(scope="module")
def tiny_tok() -> PreTrainedTokenizerBase:
    return tiny_tokenizer([Q, "Paris is. Berlin is. system user assistant"])


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tok: PreTrainedTokenizerBase) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-dpo"), tiny_tok)


def pairs() -> list[PreferenceExample]:
    return [
        PreferenceExample(user(Q), "Paris is.", "Berlin is."),
        PreferenceExample(user("capital of France?"), "Paris.", "Berlin."),
        PreferenceExample(user("France capital"), "It is Paris.", "It is Berlin."),
    ]


# --- tokenisation ---------------------------------------------------------------------


def test_only_the_final_answer_is_labelled(tiny_tok: PreTrainedTokenizerBase) -> None:
    prompt = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},  # earlier turn: context, not scored
        {"role": "user", "content": Q},
    ]
    e = encode_completion(tiny_tok, prompt, "Paris is.", 512)
    assert e is not None
    labelled = [t for t, label in zip(e.input_ids, e.labels, strict=True) if label != IGNORE_INDEX]
    assert tiny_tok.decode(labelled) == "Paris is.<|im_end|>"
    # truncation that eats the whole answer drops the pair
    first = next(i for i, label in enumerate(e.labels) if label != IGNORE_INDEX)
    assert encode_completion(tiny_tok, prompt, "Paris is.", first) is None


def test_pair_validation(tiny_tok: PreTrainedTokenizerBase) -> None:
    with pytest.raises(TailorError, match="end with a user"):
        encode_completion(tiny_tok, [{"role": "assistant", "content": "x"}], "y", 512)
    with pytest.raises(TailorError, match="identical"):
        encode_pairs(tiny_tok, [PreferenceExample(user(Q), "same", "same")], 512)
    kept, dropped = encode_pairs(tiny_tok, pairs(), 512)
    assert (len(kept), dropped) == (3, 0)


def test_dpo_loss_values() -> None:
    zero = torch.zeros(2)
    loss, c, r = dpo_loss(zero, zero, zero, zero, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))  # no preference yet
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    loss, c, r = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert c.tolist() == pytest.approx([0.5, 0.0]) and r.tolist() == pytest.approx([-0.5, 0.5])
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(0.5)))) / 2
    assert loss.item() == pytest.approx(expected)


def test_parse_and_load_preferences(tmp_path: Path) -> None:
    simple = parse_preference_record({"prompt": Q, "chosen": "Paris", "rejected": "Berlin"})
    assert simple == PreferenceExample(user(Q), "Paris", "Berlin")
    openai_style = parse_preference_record(
        {
            "input": {"messages": user(Q)},
            "preferred_output": [{"role": "assistant", "content": "Paris"}],
            "non_preferred_output": [{"role": "assistant", "content": "Berlin"}],
        }
    )
    assert openai_style == simple
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": user(Q), "chosen": "a", "rejected": "b"}) + "\n\n")
    assert load_preference_jsonl(f) == [PreferenceExample(user(Q), "a", "b")]
    f.write_text(json.dumps({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(TailorError, match=":1: a prompt must end with a user"):
        load_preference_jsonl(f)
    with pytest.raises(TailorError):
        parse_preference_record({"prompt": Q, "chosen": 3, "rejected": "b"})


# --- tiny model runs ------------------------------------------------------------------


def test_tiny_run_saves_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    seen: list[StepInfo] = []
    out = tmp_path / "adapters" / "d1"
    result = train_lora_dpo(
        tiny_model_dir,
        pairs(),
        out,
        DPOConfig(max_steps=4, batch_size=2, learning_rate=1e-2, warmup_ratio=0.0, log_every=2),
        on_step=seen.append,
    )
    assert result.steps == 4 and len(result.losses) == 4 and len(result.reward_margins) == 4
    # the reference is the policy before step 1, so the first loss is exactly log 2
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert result.trained_tokens > 0 and result.examples_used == 3
    assert [s.step for s in seen] == [2, 4] and all(isinstance(s, DPOStepInfo) for s in seen)
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert [p.name for p in out.parent.iterdir()] == ["d1"]  # no partial dir left
    with pytest.raises(TailorError) as info:
        train_lora_dpo(tiny_model_dir, pairs(), out, DPOConfig(max_steps=1))
    assert info.value.status == 409


def test_init_adapter_is_trained_and_is_the_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    # an adapter with non-zero weights (as a trained SFT adapter would have), rank 4
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    init = tmp_path / "sft"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(init)

    out = tmp_path / "dpo"
    result = train_lora_dpo(
        tiny_model_dir,
        pairs(),
        out,
        DPOConfig(max_steps=3, batch_size=3, learning_rate=1e-2, warmup_ratio=0.0),
        init_adapter_dir=init,
    )
    # had the bare base been the reference, step 1 would already show a preference
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # init's shape
    before = load_file(init / "adapter_model.safetensors")
    after = load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(TailorError) as info:
        train_lora_dpo(tiny_model_dir, pairs(), tmp_path / "x", DPOConfig(), init_adapter_dir=tmp_path)
    assert info.value.status == 404


def test_should_stop_cancels_without_writing(tiny_model_dir: Path, tmp_path: Path) -> None:
    polls = 0

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3  # one poll before the reference pass, then two steps

    out = tmp_path / "adapters" / "cancelled"
    with pytest.raises(TrainingCancelled) as info:
        train_lora_dpo(
            tiny_model_dir,
            pairs(),
            out,
            DPOConfig(max_steps=10, batch_size=1),
            should_stop=should_stop,
        )
    assert info.value.step == 2
    assert not out.exists() and not out.parent.exists()


# --- the real thing -------------------------------------------------------------------

REAL_PAIRS = [
    PreferenceExample(user(Q), "The capital of France is Paris.", "The capital of France is Berlin."),
    PreferenceExample(
        user("Which city is the capital of France?"),
        "Paris is the capital of France.",
        "Madrid is the capital of France.",
    ),
    PreferenceExample(user("What colour is a clear daytime sky?"), "It is blue.", "It is bright green."),
    PreferenceExample(user("How many legs does a spider have?"), "Eight.", "Six."),
]


@real_model
def test_real_model_learns_to_prefer_chosen(tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    stamps: list[float] = []
    # every pair in every step: a smooth loss curve in few steps
    config = DPOConfig(max_steps=8, batch_size=4, learning_rate=5e-4, warmup_ratio=0.0)
    result = train_lora_dpo(REAL_MODEL, REAL_PAIRS, out, config, on_step=lambda _: stamps.append(time.monotonic()))
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    print(
        f"\nreal DPO: {result.steps} steps, {per_step:.2f} s/step, {result.seconds:.1f} s in all; "
        f"losses {[round(x, 3) for x in result.losses]}; accuracy {result.reward_accuracies}"
    )
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-3)
    assert result.losses[-1] < 0.5 * math.log(2), result.losses
    assert all(b < a for a, b in zip(result.losses[:-1], result.losses[1:], strict=True)), result.losses
    assert result.reward_accuracies[-1] == 1.0

    # measured independently of the training loop: the policy's log-ratio chosen vs
    # rejected has grown over the reference's (the bare base model), for every pair
    tok = AutoTokenizer.from_pretrained(REAL_MODEL)
    base = AutoModelForCausalLM.from_pretrained(REAL_MODEL, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out).eval()
    encoded, _ = encode_pairs(tok, REAL_PAIRS, 512)
    batch = _pair_batch(encoded, pad_token_id(tok))
    n = len(encoded)
    with torch.no_grad():
        policy = sequence_logps(model, batch)
        with model.disable_adapter():
            ref = sequence_logps(model, batch)
    gain = (policy[:n] - policy[n:]) - (ref[:n] - ref[n:])
    print(f"log-ratio gain over the reference per pair: {[round(g, 2) for g in gain.tolist()]}")
    assert (gain > 0).all(), gain
