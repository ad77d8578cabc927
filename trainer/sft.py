"""LoRA supervised fine-tuning (SFT) of a chat model, in one readable training loop.

Given a base model directory (Hugging Face layout: config.json, model.safetensors,
tokenizer files with a chat template) and a list of chat conversations, train a LoRA
adapter with peft so the model answers like the assistant turns of the conversations,
and save it as `adapter_config.json` + `adapter_model.safetensors` - the layout vLLM
loads with `--enable-lora`.

Run it from the repository root:

    python -m trainer.sft --base models/SmolLM2-135M-Instruct --data file.jsonl \
        --out data/adapters/my-adapter --max-steps 30

`--data` is OpenAI fine-tuning chat JSONL: one `{"messages": [{"role", "content"}, ...]}`
per line. Each step prints one line: step, epoch, loss, learning rate, time.

What is learned (the loss mask): EVERY assistant turn of a conversation is a target -
its content plus the end-of-turn token that closes it, so the model also learns to stop.
System and user turns and the chat template's own scaffolding (role headers, the
"assistant" generation prompt) get label -100 and carry no loss. The mask is found by
rendering, for each assistant turn, the conversation up to it with
`add_generation_prompt=True` and checking that those tokens are a prefix of the whole
rendered conversation; a template for which that does not hold is refused with a clear
error instead of silently training on the wrong tokens.

Everything runs in float32 on whatever device torch defaults to (CPU here): bf16 training
on CPU is slow and numerically fragile, and the models this serves are small.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from core.errors import TailorError, bad_request, conflict

IGNORE_INDEX = -100  # label value torch's cross-entropy (and so HF models) skips
ROLES = ("system", "user", "assistant")


# -----------------------------------------------------------------------------
# knobs


@dataclass
class SFTConfig:
    # LoRA rank: size of the low-rank update. 8 is plenty to teach facts/style to a
    # small model and keeps the adapter a few MB.
    rank: int = 8
    # LoRA scale is alpha / rank; alpha = 2 * rank is the common, well-behaved choice.
    alpha: int = 16
    # Dropout on the LoRA input. Off by default: feedback datasets are tiny and we
    # usually WANT the model to take them verbatim.
    dropout: float = 0.0
    # Which Linear layers get an adapter. All attention and MLP projections of a Llama
    # block: adapting the MLPs too learns new facts much faster than attention alone.
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    # Peak AdamW learning rate. 2e-4 is the usual LoRA default (LoRA tolerates ~10x the
    # full fine-tuning rate because only the small update matrices move).
    learning_rate: float = 2e-4
    # Passes over the data when max_steps is None.
    epochs: int = 1
    # If set, train exactly this many optimizer steps, cycling over the data as needed
    # (epochs is then ignored). Handy to bound the cost of a job.
    max_steps: int | None = None
    # Conversations per optimizer step. Small: CPU memory and time grow with it.
    batch_size: int = 4
    # Tokens per conversation; longer ones are cut at the end (the start is kept).
    max_seq_len: int = 512
    # Seeds the LoRA initialisation, the data order and dropout: same inputs, same adapter.
    seed: int = 0
    # AdamW decoupled weight decay on the LoRA matrices. 0: nothing to regularise
    # towards on tiny datasets.
    weight_decay: float = 0.0
    # Fraction of the steps spent ramping the learning rate linearly up from 0; after
    # that it decays linearly to 0 at the last step.
    warmup_ratio: float = 0.0
    # Call on_step (and so print, from the CLI) every this many steps (and on the last).
    log_every: int = 1
    # Clip the global gradient norm to this; keeps high learning rates from blowing up
    # on an unlucky batch. None or 0 disables.
    grad_clip: float | None = 1.0


# -----------------------------------------------------------------------------
# data types


@dataclass
class ChatExample:
    """One conversation: `[{"role": "system"|"user"|"assistant", "content": str}, ...]`.

    Every assistant message is a training target; the others are context only.
    """

    messages: list[dict[str, str]]


@dataclass
class EncodedExample:
    """A tokenised conversation: input ids and labels (IGNORE_INDEX where no loss)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class StepInfo:
    step: int  # 1-based number of optimizer steps done
    epoch: int  # 0-based pass over the data this step belongs to
    loss: float  # mean cross-entropy over the target tokens of this step's batch
    learning_rate: float  # the rate this step was taken with
    total_steps: int = 0  # how many steps the run will take (for progress displays)


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    losses: list[float]  # one per optimizer step
    out_dir: Path
    seconds: float  # wall time of the whole call: loading, training, saving
    examples_used: int = 0
    examples_dropped: int = 0  # conversations left with no target token (see encode_examples)
    trained_tokens: int = 0  # non-padding tokens fed through the model, over all steps


class TrainingCancelled(Exception):
    """should_stop() returned True; nothing was written at out_dir."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training cancelled after {step} step(s); no adapter written")
        self.step = step


# -----------------------------------------------------------------------------
# tokenisation with the completion-only mask


def _render(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool,
) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        list(messages),
        tokenize=True,
        add_generation_prompt=add_generation_prompt,
        return_dict=True,
    )
    return [int(t) for t in encoded["input_ids"]]


def _validate(messages: Sequence[dict[str, str]]) -> None:
    if not messages:
        raise bad_request("a training example has no messages", param="messages")
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise bad_request(
                f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}",
                param="messages",
            )
        if not isinstance(content, str):
            raise bad_request(f"message {i} content must be a string", param="messages")
    if messages[0]["role"] == "assistant":
        raise bad_request("a conversation cannot start with an assistant message", param="messages")


def encode_example(tokenizer: PreTrainedTokenizerBase, example: ChatExample, max_seq_len: int) -> EncodedExample | None:
    """Tokenise one conversation with the chat template; None if no target token survives.

    Labels are IGNORE_INDEX everywhere except on each assistant turn's content and the
    end-of-turn (eos) token closing it. Truncation keeps the first max_seq_len tokens.
    """
    messages = example.messages
    _validate(messages)
    full = _render(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    eos = tokenizer.eos_token_id

    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        for what, part in (("the prompt before", prompt), ("the conversation through", through)):
            if full[: len(part)] != part:
                raise TailorError(
                    500,
                    f"the chat template of {tokenizer.name_or_path!r} does not render "
                    f"{what} assistant message {i} as a token prefix of the whole "
                    "conversation, so the assistant tokens cannot be located for the "
                    "loss mask; this template is not supported for SFT",
                    code="chat_template_not_prefix_stable",
                )
        start, stop = len(prompt), len(through)
        # Whatever the template puts after the end-of-turn token (often a newline)
        # belongs to the scaffolding, not the answer: stop right after eos if present.
        if eos is not None and eos in full[start:stop]:
            stop = full.index(eos, start, stop) + 1
        labels[start:stop] = full[start:stop]

    example_out = EncodedExample(input_ids=full[:max_seq_len], labels=labels[:max_seq_len])
    return example_out if example_out.target_tokens > 0 else None


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[ChatExample], max_seq_len: int
) -> tuple[list[EncodedExample], int]:
    """Encode all conversations; returns (kept, number dropped for having no target).

    A conversation is dropped when it has no assistant message or when truncation to
    max_seq_len cut off every assistant token.
    """
    kept: list[EncodedExample] = []
    for example in examples:
        encoded = encode_example(tokenizer, example, max_seq_len)
        if encoded is not None:
            kept.append(encoded)
    return kept, len(examples) - len(kept)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad token, else eos (padding is masked out, so its id is moot)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise TailorError(500, "the tokenizer has neither a pad nor an eos token", code="no_pad_token")


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest member: input_ids, attention_mask, labels."""
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def load_chat_jsonl(path: Path) -> list[ChatExample]:
    """Read OpenAI fine-tuning chat JSONL: one {"messages": [...]} object per line.

    Only role and content are kept (name, weight, tool fields are ignored).
    """
    examples: list[ChatExample] = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise bad_request(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise bad_request(f'{path}:{lineno}: expected {{"messages": [...]}}')
            examples.append(
                ChatExample(messages=[{"role": m.get("role"), "content": m.get("content")} for m in messages])
            )
    return examples


# -----------------------------------------------------------------------------
# training


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to 1 over warmup_steps, then linear decay towards 0.

    `step` is 0-based; the last step still gets a small non-zero rate.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _save_atomically(model: Any, out_dir: Path) -> None:
    """save_pretrained into a hidden sibling dir, then rename it to out_dir.

    A run killed mid-save leaves only a `.{name}.partial-*` dir, never a half-written
    adapter at out_dir. rename() is atomic within a filesystem and refuses to replace
    a non-empty directory.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train_lora_sft(
    base_model_dir: Path,
    examples: list[ChatExample],
    out_dir: Path,
    config: SFTConfig,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[StepInfo, Callable[[Path], None]], None] | None = None,
    init_adapter_dir: Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `examples` and save it at `out_dir` (which must not exist
    or be empty). should_stop() is polled before every step and before saving; when it
    returns True, TrainingCancelled is raised and out_dir is left untouched.

    on_checkpoint(info, save) is called after every step; calling `save(dir)` writes the
    adapter as it is at that step to `dir` (atomically, like the final save), so the caller
    decides how often checkpoints are worth their disk. With init_adapter_dir, training
    continues from that PEFT adapter (its rank, alpha and targets; config's are ignored)."""
    t0 = time.monotonic()
    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise conflict(f"{out_dir} already exists; refusing to overwrite an adapter")

    # data: chat template -> ids + completion-only labels
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    data, dropped = encode_examples(tokenizer, examples, config.max_seq_len)
    if not data:
        raise bad_request(
            f"none of the {len(examples)} examples has an assistant token to learn from "
            f"(within max_seq_len={config.max_seq_len})",
            code="no_training_targets",
        )
    pad_id = pad_token_id(tokenizer)

    # model: frozen float32 base + trainable LoRA matrices
    torch.manual_seed(config.seed)  # before get_peft_model: seeds the LoRA init too
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    model.config.use_cache = False  # no KV cache in training: saves memory
    if init_adapter_dir is not None:
        model = PeftModel.from_pretrained(model, Path(init_adapter_dir), is_trainable=True)
    else:
        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules),
        )
        model = get_peft_model(model, lora)
    model.train()

    # schedule
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
    if total_steps <= 0:
        raise bad_request("nothing to do: max_steps/epochs give 0 training steps")
    warmup_steps = int(config.warmup_ratio * total_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup_steps, total_steps))
    order_rng = torch.Generator().manual_seed(config.seed)

    # the loop: shuffle, batch, forward, backward, clip, step
    losses: list[float] = []
    step = 0
    epoch = 0
    tokens = 0
    while step < total_steps:
        order = torch.randperm(len(data), generator=order_rng).tolist()
        for first in range(0, len(order), config.batch_size):
            if step >= total_steps:
                break
            if should_stop is not None and should_stop():
                raise TrainingCancelled(step)
            batch = collate([data[i] for i in order[first : first + config.batch_size]], pad_id)
            lr = scheduler.get_last_lr()[0]
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
            info = StepInfo(step, epoch, losses[-1], lr, total_steps)
            if on_step is not None and (step % config.log_every == 0 or step == total_steps):
                on_step(info)
            if on_checkpoint is not None:
                on_checkpoint(info, lambda path: _save_atomically(model, Path(path)))
        epoch += 1

    if should_stop is not None and should_stop():
        raise TrainingCancelled(step)
    _save_atomically(model, out_dir)
    return TrainResult(
        steps=step,
        final_loss=losses[-1],
        losses=losses,
        out_dir=out_dir,
        seconds=time.monotonic() - t0,
        examples_used=len(data),
        examples_dropped=dropped,
        trained_tokens=tokens,
    )


# -----------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None) -> int:
    d = SFTConfig()
    p = argparse.ArgumentParser(prog="python -m trainer.sft", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="base model directory")
    p.add_argument("--data", type=Path, required=True, help="OpenAI chat fine-tuning JSONL")
    p.add_argument("--out", type=Path, required=True, help="adapter directory to create")
    p.add_argument("--max-steps", type=int, default=d.max_steps)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--alpha", type=int, default=d.alpha)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-seq-len", type=int, default=d.max_seq_len)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--log-every", type=int, default=d.log_every)
    args = p.parse_args(argv)

    config = SFTConfig(
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        learning_rate=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        seed=args.seed,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        log_every=args.log_every,
        grad_clip=args.grad_clip,
    )
    examples = load_chat_jsonl(args.data)
    last = time.monotonic()  # the first line's time also covers loading the model

    def print_step(info: StepInfo) -> None:
        nonlocal last
        now = time.monotonic()
        print(
            f"step {info.step}/{info.total_steps} | epoch {info.epoch} | loss {info.loss:.4f} "
            f"| lr {info.learning_rate:.2e} | {1000 * (now - last):.0f} ms",
            flush=True,
        )
        last = now

    try:
        result = train_lora_sft(args.base, examples, args.out, config, on_step=print_step)
    except TailorError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    print(
        f"saved {result.out_dir} | {result.steps} steps | final loss {result.final_loss:.4f} "
        f"| {result.examples_used} examples used, {result.examples_dropped} dropped "
        f"| {result.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
