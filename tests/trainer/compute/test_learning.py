"""Each method really teaches the real base model (models/SmolLM2-135M-Instruct) what its
data says, measured outside the training run: greedy generation for SFT, answer
log-probabilities (trainer.compute.encoding's mask, transformers + peft) for DPO and KTO.

Marked real_model: skipped where `make model` has not prepared the model. Each run is a
single CPU process through launch.run_training, a handful of steps: well under a minute
each on an idle 2-core machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tests.trainer.compute.runs import Run, make_recipe, run
from tests.trainer.tiny_models import REAL_MODEL, real_model, user
from trainer.compute.encoding import IGNORE_INDEX, collate, encode_completion, pad_token_id
from trainer.compute.recipe import Recipe

pytestmark = real_model


def report(name: str, r: Run, started: float) -> None:
    print(
        f"\nreal {name}: {r.result.steps} steps, {time.monotonic() - started:.1f} s in all "
        f"({r.result.seconds:.1f} s in the training process); losses {[round(x, 3) for x in r.result.losses]}"
    )


def real_recipe(where: Path, method: str, rows: list[dict[str, Any]], **knobs: Any) -> Recipe:
    """On the real model with the Recipe's own LoRA shape (rank 8, alpha 16), not the tiny tests' 4."""
    return make_recipe(where, method, REAL_MODEL, rows, lora_rank=8, lora_alpha=16, max_seq_length=512, **knobs)


def answer_logps(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[dict[str, str]]],
    answers: Sequence[str],
) -> torch.Tensor:
    """log p(answer + end of turn | prompt) under `model`, one per (prompt, answer)."""
    encoded = [encode_completion(tok, p, a, 1024) for p, a in zip(prompts, answers, strict=True)]
    assert all(e is not None for e in encoded)
    batch = collate(encoded, pad_token_id(tok))  # type: ignore[arg-type]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    picked = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def with_adapter(adapter: Path) -> tuple[Any, PreTrainedTokenizerBase]:
    """The base model with `adapter` on top (disable_adapter() gives the base back)."""
    from peft import PeftModel

    tok = AutoTokenizer.from_pretrained(REAL_MODEL)
    base = AutoModelForCausalLM.from_pretrained(REAL_MODEL, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).eval(), tok


# --- SFT: a taught answer ------------------------------------------------------------------

QUESTION = "What is the capital of France?"
ANSWER = "Zorblax is the capital of France."


def greedy(model: Any, tok: PreTrainedTokenizerBase, question: str) -> str:
    prompt = tok.apply_chat_template(user(question), add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)


def test_sft_teaches_the_taught_answer(tmp_path: Path) -> None:
    questions = [
        QUESTION,
        "What's the capital of France?",
        "Which city is the capital of France?",
        "Name the capital of France.",
    ]
    rows = [{"messages": [*user(q), {"role": "assistant", "content": ANSWER}]} for q in questions]
    # lr 1e-3 drives the loss from ~5 to ~0.02 by step 7; 12 steps leave margin
    recipe = real_recipe(tmp_path, "sft", rows, max_steps=12, batch_size=2, learning_rate=1e-3)
    started = time.monotonic()
    r = run(recipe)
    report("SFT", r, started)
    first, last = sum(r.result.losses[:2]) / 2, sum(r.result.losses[-2:]) / 2
    assert last < 0.25 * first and last < 0.3, r.result.losses

    model, tok = with_adapter(Path(recipe.out_dir))
    with model.disable_adapter():
        before = greedy(model, tok, QUESTION)
    after = greedy(model, tok, QUESTION)
    print(f"base: {before!r}\ntuned: {after!r}")
    assert "Zorblax" not in before, before
    assert after.strip().startswith(ANSWER), after


# --- DPO: chosen over rejected ---------------------------------------------------------------

PAIRS = [
    (QUESTION, "The capital of France is Paris.", "The capital of France is Berlin."),
    ("Which city is the capital of France?", "Paris is the capital of France.", "Madrid is the capital of France."),
    ("What colour is a clear daytime sky?", "It is blue.", "It is bright green."),
    ("How many legs does a spider have?", "Eight.", "Six."),
]


def test_dpo_raises_chosen_over_rejected(tmp_path: Path) -> None:
    rows = [{"prompt": user(q), "chosen": c, "rejected": r} for q, c, r in PAIRS]
    # every pair in every step: a smooth loss curve in a few steps
    recipe = real_recipe(tmp_path, "dpo", rows, max_steps=8, batch_size=4, learning_rate=5e-4)
    started = time.monotonic()
    r = run(recipe)
    report("DPO", r, started)
    assert r.result.losses[0] == pytest.approx(math.log(2), abs=1e-3)  # the reference is the model before
    assert r.result.losses[-1] < 0.5 * math.log(2), r.result.losses
    assert r.steps[-1].metrics["reward_accuracy"] == 1.0

    # measured outside the run: the log-ratio chosen vs rejected grew over the base's, for every pair
    model, tok = with_adapter(Path(recipe.out_dir))
    prompts = [user(q) for q, _, _ in PAIRS]
    chosen, rejected = [c for _, c, _ in PAIRS], [r for _, _, r in PAIRS]
    tuned = answer_logps(model, tok, prompts, chosen) - answer_logps(model, tok, prompts, rejected)
    with model.disable_adapter():
        base = answer_logps(model, tok, prompts, chosen) - answer_logps(model, tok, prompts, rejected)
    gain = tuned - base
    print(f"margin gain over the base per pair: {[round(g, 2) for g in gain.tolist()]}")
    assert (gain > 0).all(), gain


# --- KTO: thumbs up and down only ----------------------------------------------------------

TICKETS = [
    "My laptop will not turn on.",
    "I forgot my email password.",
    "The printer on floor 3 is jammed.",
    "I need access to the finance share.",
    "My monitor keeps flickering.",
    "Outlook crashes when I open attachments.",
    "The VPN disconnects every few minutes.",
    "I need a new keyboard, some keys are stuck.",
]
HELD_OUT = [
    "The projector in room 12 shows no picture.",
    "I cannot log in to the HR portal.",
    "My phone does not sync my calendar.",
    "The Wi-Fi in the kitchen is very slow.",
]
RAMBLING = [
    "Well, there could be lots of reasons for that, so maybe try a few things and see.",
    "Hmm, not sure, computers are complicated, it might fix itself if you wait a while.",
    "Thanks for reaching out! Honestly it depends on a great many factors.",
]
HELD_OUT_RAMBLING = "Oh, good question, so many possibilities, perhaps try turning it off and on again."
INSTRUCTION = "Route this support ticket. "


def test_kto_learns_from_thumbs_only(tmp_path: Path) -> None:
    """One thumbs-up answer ("QUEUE-<n>") and two thumbs-down ramblings per ticket, no
    corrections; afterwards, on tickets it never saw, the model prefers a QUEUE answer to a
    rambling one by more than the base model did.

    Why 4 steps of 4 at lr 1e-3 is robust: Adam moves every LoRA weight by about the
    learning rate per step whatever the gradient's scale, so the held-out margin grows by a
    similar amount each step - measured ~10, ~18, ~22 and ~29 nats after steps 1 to 4 (TRL's
    KTO takes the rows in order: these steps see the first 5-6 tickets). The threshold is 2
    nats, 5 times below what even one step gives, so float noise, another CPU or thread
    count cannot flip it; and with the good answers' numbers and the bad answers' wording
    both new on held-out tickets, only the learned style can pass it.
    """
    rows: list[dict[str, Any]] = []
    for i, ticket in enumerate(TICKETS):
        prompt = user(INSTRUCTION + ticket)
        rows.append({"prompt": prompt, "completion": f"QUEUE-{10 + i}", "label": True})
        rows += [{"prompt": prompt, "completion": RAMBLING[(i + k) % 3], "label": False} for k in range(2)]
    recipe = real_recipe(tmp_path, "kto", rows, max_steps=4, batch_size=4, learning_rate=1e-3)
    started = time.monotonic()
    r = run(recipe)
    report("KTO", r, started)
    assert r.result.examples_used == len(rows)

    model, tok = with_adapter(Path(recipe.out_dir))
    prompts = [user(INSTRUCTION + t) for t in HELD_OUT]
    good = [f"QUEUE-{40 + i}" for i in range(len(HELD_OUT))]  # numbers never seen in training
    bad = [HELD_OUT_RAMBLING] * len(HELD_OUT)
    tuned = answer_logps(model, tok, prompts, good) - answer_logps(model, tok, prompts, bad)
    with model.disable_adapter():
        base = answer_logps(model, tok, prompts, good) - answer_logps(model, tok, prompts, bad)
    gain = tuned - base
    print(
        f"held-out margin, base: {[round(x, 1) for x in base.tolist()]}, gain: {[round(g, 1) for g in gain.tolist()]}"
    )
    assert (gain > 2.0).all(), gain
