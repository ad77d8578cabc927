"""LoRA Direct Preference Optimisation (DPO) of a chat model, in one readable loop.

Given a base model directory and preference pairs (a prompt conversation, a `chosen`
answer and a `rejected` one), train a LoRA adapter so the model prefers the chosen
answers more than the reference model did, and save it in the same vLLM-loadable layout
as trainer.sft (`adapter_config.json` + `adapter_model.safetensors`).

Run it from the repository root:

    python -m trainer.dpo --base models/SmolLM2-135M-Instruct --data prefs.jsonl \
        --out data/adapters/my-dpo --max-steps 30 [--init-adapter data/adapters/my-sft]

`--data` is JSONL, one pair per line, either
    {"prompt": "question" | [messages...], "chosen": "...", "rejected": "..."}
or OpenAI's preference fine-tuning format
    {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}.

The loss (Rafailov et al. 2023), per pair, with log-probabilities summed over the
answer's tokens (its content and the closing end-of-turn token, as trainer.sft labels
them; the prompt is context only):

    loss = -log sigmoid(beta * ((pi(chosen) - ref(chosen)) - (pi(rejected) - ref(rejected))))

The reference model is the policy as it is BEFORE the first step: the bare base model,
or base + the init adapter when `init_adapter_dir` is given (DPO on top of an SFT
adapter should stay close to that adapter, not to the untuned base). Since the
reference never changes, its log-probabilities are computed once for every pair up
front (one no-grad pass in eval mode) instead of on every step: that is one forward
pass per pair in all rather than one per step, needs no second copy of the weights and
no adapter switching, and is exactly equivalent to `with model.disable_adapter():` for
the fresh-LoRA case (a new LoRA's B matrix is zero, so policy == base at step 0).
A consequence worth knowing: with dropout 0 the first step's loss is exactly log 2.

Everything runs in float32 (see trainer.sft for why). The training loop is trainer.loop,
shared with trainer.sft; this module is what DPO adds: pairs, the reference, the loss.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.errors import TailorError, bad_request, not_found
from trainer import loop
from trainer.loop import StepInfo, TrainConfig, TrainResult
from trainer.sft import (
    IGNORE_INDEX,
    ChatExample,
    EncodedExample,
    _render,
    collate,
    encode_example,
    jsonl_records,
    pad_token_id,
)

# -----------------------------------------------------------------------------
# knobs


@dataclass
class DPOConfig(TrainConfig):
    """trainer.loop.TrainConfig with DPO's rate and warmup, plus beta.

    A batch is batch_size pairs, each two sequences (prompt + chosen, prompt + rejected),
    so 2 * batch_size rows; max_seq_len cuts each sequence, and a pair whose chosen or
    rejected answer is cut off entirely is dropped.
    """

    # Peak AdamW rate. Lower than SFT's 2e-4: DPO pushes log-ratios apart without a
    # bound, and a high rate quickly drags the chosen answers' likelihood down too
    # (degenerate text) while the margin still looks great.
    learning_rate: float = 5e-5
    # A short warmup: the first steps see the largest gradients (policy == reference,
    # sigmoid at 0.5), and ramping the rate up avoids a lurch on step 1.
    warmup_ratio: float = 0.1
    # Strength of the implicit KL leash to the reference: small beta lets the policy
    # drift further. 0.1 is the paper's and the common default.
    beta: float = 0.1


# -----------------------------------------------------------------------------
# data types


@dataclass
class PreferenceExample:
    """`prompt` is a conversation ending with a user turn; chosen/rejected are answers to it."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str


@dataclass
class EncodedPair:
    chosen: EncodedExample
    rejected: EncodedExample


@dataclass
class DPOStepInfo(StepInfo):
    """StepInfo plus the implicit rewards beta * (log pi - log ref) of this step's batch."""

    reward_accuracy: float = 0.0  # fraction of pairs whose chosen reward beats the rejected one
    reward_margin: float = 0.0  # mean (chosen reward - rejected reward)
    chosen_reward: float = 0.0  # mean; going negative means chosen answers lose likelihood
    rejected_reward: float = 0.0


@dataclass
class DPOTrainResult(TrainResult):
    reward_accuracies: list[float] = field(default_factory=list)  # one per step
    reward_margins: list[float] = field(default_factory=list)  # one per step


# -----------------------------------------------------------------------------
# tokenisation: prompt + one answer, loss mask on the answer only


def validate_prompt(prompt: Sequence[dict[str, str]]) -> None:
    """A prompt is a non-empty conversation whose last turn is the user's."""
    if not isinstance(prompt, list | tuple) or not prompt:
        raise bad_request("a prompt must be a non-empty list of messages", param="prompt")
    last = prompt[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise bad_request("a prompt must end with a user message", param="prompt")


def encode_completion(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[dict[str, str]],
    completion: str,
    max_seq_len: int,
) -> EncodedExample | None:
    """Tokenise prompt + assistant `completion`; labels only on the completion (and its eos).

    trainer.sft labels every assistant turn, including earlier ones inside a multi-turn
    prompt; here only the final answer is scored, so the labels before the generation
    prompt are blanked. None when truncation leaves no answer token.
    """
    validate_prompt(prompt)
    if not isinstance(completion, str):
        raise bad_request("an answer must be a string", param="completion")
    messages = [*prompt, {"role": "assistant", "content": completion}]
    encoded = encode_example(tokenizer, ChatExample(messages), max_seq_len)
    if encoded is None:
        return None
    # encode_example has checked that this render is a token prefix of the whole one
    n_prompt = len(_render(tokenizer, prompt, add_generation_prompt=True))
    labels = [IGNORE_INDEX] * min(n_prompt, len(encoded.labels)) + encoded.labels[n_prompt:]
    out = EncodedExample(input_ids=encoded.input_ids, labels=labels)
    return out if out.target_tokens > 0 else None


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[PreferenceExample], max_seq_len: int
) -> tuple[list[EncodedPair], int]:
    """Encode all pairs; returns (kept, number dropped because truncation ate an answer)."""
    kept: list[EncodedPair] = []
    for i, example in enumerate(examples):
        if example.chosen == example.rejected:
            # the loss is a constant log 2 with zero gradient: almost surely a data bug
            raise bad_request(f"pair {i}: chosen and rejected answers are identical")
        chosen = encode_completion(tokenizer, example.prompt, example.chosen, max_seq_len)
        rejected = encode_completion(tokenizer, example.prompt, example.rejected, max_seq_len)
        if chosen is not None and rejected is not None:
            kept.append(EncodedPair(chosen, rejected))
    return kept, len(examples) - len(kept)


# -----------------------------------------------------------------------------
# the maths


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(token) over each row's labelled tokens: shape [rows].

    Logits at position t predict token t + 1, hence the shift. Cross-entropy with
    reduction="none" gives 0 at ignored positions, so a plain sum is the masked sum.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(),
        batch["labels"][:, 1:],
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return -nll.sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards); rewards are beta * log(pi / ref)."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    # logsigmoid rather than log(sigmoid(x)): stays finite for large negative margins
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def _pair_batch(pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows, in one padded batch: one forward per step."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


@torch.no_grad()
def reference_logps(model: Any, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int) -> torch.Tensor:
    """[len(pairs), 2] (chosen, rejected) log-probs under `model` as it is now, in eval mode."""
    was_training = model.training
    model.eval()  # no dropout: the reference is a fixed function
    out = []
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first : first + batch_size]
        logps = sequence_logps(model, _pair_batch(chunk, pad_id))
        out.append(torch.stack([logps[: len(chunk)], logps[len(chunk) :]], dim=1))
    model.train(was_training)
    return torch.cat(out)


# -----------------------------------------------------------------------------
# training


def train_lora_dpo(
    base_model_dir: Path,
    examples: list[PreferenceExample],
    out_dir: Path,
    config: DPOConfig,
    *,
    init_adapter_dir: Path | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[StepInfo, Callable[[Path], None]], None] | None = None,
) -> DPOTrainResult:
    """Train a LoRA adapter with DPO on `examples` and save it at `out_dir` (must not
    exist or be empty). With `init_adapter_dir`, training continues from that adapter and
    it is also the reference. on_step gets DPOStepInfo (a StepInfo). should_stop() is
    polled before every step and before saving; True raises TrainingCancelled and
    nothing is written. on_checkpoint(info, save) works as in train_lora_sft: called
    after every step, `save(dir)` writes the adapter as it is now, atomically."""
    run = loop.TrainingRun(out_dir, config, on_step, should_stop, on_checkpoint)
    base_model_dir = Path(base_model_dir)
    if config.beta <= 0:
        raise bad_request("beta must be > 0", param="beta")

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    data, dropped = encode_pairs(tokenizer, examples, config.max_seq_len)
    loop.require_targets(data, f"{len(examples)} preference pairs keeps an answer token on both sides", config)
    pad_id = pad_token_id(tokenizer)

    if init_adapter_dir is not None and not (Path(init_adapter_dir) / "adapter_config.json").is_file():
        raise not_found(f"no adapter at {init_adapter_dir} (adapter_config.json missing)")
    model = loop.load_lora_model(base_model_dir, config, init_adapter_dir)
    run.stop_if_asked(0)
    ref = reference_logps(model, data, pad_id, config.batch_size)

    # a batch's loss: chosen and rejected rows in one forward, against the fixed reference
    def batch_loss(indices: list[int]) -> loop.BatchLoss:
        batch = _pair_batch([data[i] for i in indices], pad_id)
        logps = sequence_logps(model, batch)
        n = len(indices)
        loss, chosen_r, rejected_r = dpo_loss(logps[:n], logps[n:], ref[indices, 0], ref[indices, 1], config.beta)
        metrics = {
            "reward_accuracy": (chosen_r > rejected_r).float().mean().item(),
            "reward_margin": (chosen_r - rejected_r).mean().item(),
            "chosen_reward": chosen_r.mean().item(),
            "rejected_reward": rejected_r.mean().item(),
        }
        return loop.BatchLoss(loss, int(batch["attention_mask"].sum()), metrics)

    result, steps = run.train_and_save(model, len(data), batch_loss, DPOStepInfo, examples_dropped=dropped)
    return DPOTrainResult(
        **vars(result),
        reward_accuracies=[s.reward_accuracy for s in steps],
        reward_margins=[s.reward_margin for s in steps],
    )


# -----------------------------------------------------------------------------
# data file and command line


def _answer_text(value: Any, where: str) -> str:
    """An answer given as a string or as OpenAI's [{"role": "assistant", "content": ...}]."""
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and len(value) == 1
        and isinstance(value[0], dict)
        and isinstance(value[0].get("content"), str)
    ):
        return value[0]["content"]
    raise bad_request(f"{where}: an answer must be a string or one assistant message")


def parse_preference_record(record: Any, where: str = "record") -> PreferenceExample:
    """One JSON object in either accepted shape (see the module docstring)."""
    if not isinstance(record, dict):
        raise bad_request(f"{where}: expected a JSON object")
    if "input" in record:  # OpenAI preference fine-tuning format
        inp = record["input"]
        prompt = inp.get("messages") if isinstance(inp, dict) else None
        chosen_raw, rejected_raw = (
            record.get("preferred_output"),
            record.get("non_preferred_output"),
        )
    else:
        prompt = record.get("prompt")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        chosen_raw, rejected_raw = record.get("chosen"), record.get("rejected")
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise bad_request(f"{where}: the prompt must be a string or a list of messages")
    messages = [{"role": m.get("role"), "content": m.get("content")} for m in prompt]
    try:
        validate_prompt(messages)
    except TailorError as e:
        raise bad_request(f"{where}: {e.message}") from e
    return PreferenceExample(
        prompt=messages,
        chosen=_answer_text(chosen_raw, where),
        rejected=_answer_text(rejected_raw, where),
    )


def load_preference_jsonl(path: Path) -> list[PreferenceExample]:
    return [parse_preference_record(record, where) for where, record in jsonl_records(path)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.dpo", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="base model directory")
    p.add_argument("--data", type=Path, required=True, help="preference pairs JSONL")
    p.add_argument("--out", type=Path, required=True, help="adapter directory to create")
    p.add_argument("--init-adapter", type=Path, default=None, help="start from (and stay near) this adapter")
    p.add_argument("--beta", type=float, default=DPOConfig().beta)
    loop.add_config_options(p, DPOConfig())
    args = p.parse_args(argv)
    config = DPOConfig(**loop.config_options(args), beta=args.beta)

    def print_step(info: StepInfo) -> None:
        extra = ""
        if isinstance(info, DPOStepInfo):
            extra = f" | acc {info.reward_accuracy:.2f} | margin {info.reward_margin:+.3f}"
        print(f"step {info.step}/{info.total_steps} | loss {info.loss:.4f}{extra}", flush=True)

    def train() -> DPOTrainResult:
        examples = load_preference_jsonl(args.data)
        return train_lora_dpo(
            args.base, examples, args.out, config, init_adapter_dir=args.init_adapter, on_step=print_step
        )

    return loop.run_and_report(train, "pairs")


if __name__ == "__main__":
    sys.exit(main())
