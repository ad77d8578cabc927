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

The loop itself (LoRA setup, optimizer and schedule, cancellation, checkpoints, the
atomic save) is trainer.loop, shared with trainer.dpo; this module is what SFT adds:
the data, its loss mask, and how a batch becomes a loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.errors import TailorError, bad_request
from trainer import loop
from trainer.loop import StepInfo, TrainConfig, TrainResult
from trainer.loop import TrainingCancelled as TrainingCancelled  # re-exported: trainer.worker imports it from here

IGNORE_INDEX = -100  # label value torch's cross-entropy (and so HF models) skips
ROLES = ("system", "user", "assistant")


# -----------------------------------------------------------------------------
# knobs


@dataclass
class SFTConfig(TrainConfig):
    """trainer.loop.TrainConfig as it is: its defaults are the SFT ones.

    A batch is batch_size conversations; max_seq_len cuts each conversation.
    """


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


def jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for each non-blank line of a JSONL file; where is "path:lineno"."""
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise bad_request(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            yield f"{path}:{lineno}", record


def load_chat_jsonl(path: Path) -> list[ChatExample]:
    """Read OpenAI fine-tuning chat JSONL: one {"messages": [...]} object per line.

    Only role and content are kept (name, weight, tool fields are ignored).
    """
    examples: list[ChatExample] = []
    for where, record in jsonl_records(path):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise bad_request(f'{where}: expected {{"messages": [...]}}')
        examples.append(ChatExample(messages=[{"role": m.get("role"), "content": m.get("content")} for m in messages]))
    return examples


# -----------------------------------------------------------------------------
# training


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
    run = loop.TrainingRun(out_dir, config, on_step, should_stop, on_checkpoint)
    base_model_dir = Path(base_model_dir)

    # data: chat template -> ids + completion-only labels
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    data, dropped = encode_examples(tokenizer, examples, config.max_seq_len)
    loop.require_targets(data, f"{len(examples)} examples has an assistant token to learn from", config)
    pad_id = pad_token_id(tokenizer)

    # model: frozen float32 base + trainable LoRA matrices
    model = loop.load_lora_model(base_model_dir, config, init_adapter_dir)

    # a batch's loss: HF's mean cross-entropy over the labelled (assistant) tokens
    def batch_loss(indices: list[int]) -> loop.BatchLoss:
        batch = collate([data[i] for i in indices], pad_id)
        return loop.BatchLoss(model(**batch).loss, int(batch["attention_mask"].sum()))

    result, _ = run.train_and_save(model, len(data), batch_loss, StepInfo, examples_dropped=dropped)
    return result


# -----------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.sft", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="base model directory")
    p.add_argument("--data", type=Path, required=True, help="OpenAI chat fine-tuning JSONL")
    p.add_argument("--out", type=Path, required=True, help="adapter directory to create")
    loop.add_config_options(p, SFTConfig())
    args = p.parse_args(argv)
    config = SFTConfig(**loop.config_options(args))
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

    return loop.run_and_report(
        lambda: train_lora_sft(args.base, examples, args.out, config, on_step=print_step), "examples"
    )


if __name__ == "__main__":
    sys.exit(main())
