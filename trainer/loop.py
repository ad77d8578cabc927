"""The LoRA training loop trainer.sft and trainer.dpo share, top to bottom.

Both methods train the same way: a frozen float32 base model wrapped by peft with
trainable LoRA matrices (fresh, or continuing from an init adapter), AdamW with a linear
warmup-then-decay schedule and gradient-norm clipping, over shuffled batches of the
examples, cycling through them until the step budget is spent; then the adapter is saved
atomically. The caller is told about every step (on_step), may cancel between steps
(should_stop -> TrainingCancelled) and may save checkpoints (on_checkpoint).

What differs between methods is the data and how a batch of it becomes a loss; a
method's train function reads:

    run = TrainingRun(out_dir, config, on_step, should_stop, on_checkpoint)  # clock starts
    data, dropped = ...encode the examples with the base model's tokenizer...
    require_targets(data, ..., config)
    model = load_lora_model(base_model_dir, config, init_adapter_dir)
    def batch_loss(indices) -> BatchLoss: ...a forward pass over data[indices]...
    result, steps = run.train_and_save(model, len(data), batch_loss, StepInfo, examples_dropped=dropped)
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from core.errors import TailorError, bad_request, conflict

# -----------------------------------------------------------------------------
# knobs


@dataclass
class TrainConfig:
    """What every method shares; trainer.sft.SFTConfig and trainer.dpo.DPOConfig extend it."""

    # LoRA rank: size of the low-rank update. 8 is plenty to teach facts/style to a
    # small model and keeps the adapter a few MB. rank, alpha, dropout and
    # target_modules shape a fresh LoRA; an init adapter brings its own.
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
    # Examples per optimizer step. Small: CPU memory and time grow with it.
    batch_size: int = 4
    # Tokens per encoded sequence; longer ones are cut at the end (the start is kept).
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
# what goes in and out of the loop


@dataclass
class StepInfo:
    step: int  # 1-based number of optimizer steps done
    epoch: int  # 0-based pass over the data this step belongs to
    loss: float  # the training loss of this step's batch
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
    examples_dropped: int = 0  # examples left with no target token after encoding/truncation
    trained_tokens: int = 0  # non-padding tokens fed through the model, over all steps


class TrainingCancelled(Exception):
    """should_stop() returned True; nothing was written at out_dir."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training cancelled after {step} step(s); no adapter written")
        self.step = step


Info = TypeVar("Info", bound=StepInfo)


@dataclass
class BatchLoss:
    """What `batch_loss(indices)` returns for one step's batch."""

    loss: torch.Tensor  # scalar, to backpropagate
    tokens: int  # non-padding tokens the batch fed through the model
    metrics: dict[str, float] = field(default_factory=dict)  # extra fields of the StepInfo subclass


# -----------------------------------------------------------------------------
# before the loop: is there anything to learn, and the model to train


def require_targets(data: Sequence[Any], what: str, config: TrainConfig) -> None:
    """Refuse to train when encoding kept no example: "none of the {what}" is the message."""
    if not data:
        raise bad_request(
            f"none of the {what} (within max_seq_len={config.max_seq_len})",
            code="no_training_targets",
        )


def load_lora_model(base_model_dir: Path, config: TrainConfig, init_adapter_dir: Path | None = None) -> Any:
    """The frozen float32 base model with trainable LoRA matrices, in train mode.

    A fresh LoRA is shaped by config (rank, alpha, dropout, target_modules); with
    init_adapter_dir, training continues from that PEFT adapter and its shape is used.
    """
    torch.manual_seed(config.seed)  # before the LoRA is created: seeds its init too
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
    return model


# -----------------------------------------------------------------------------
# the loop


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to 1 over warmup_steps, then linear decay towards 0.

    `step` is 0-based; the last step still gets a small non-zero rate.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class TrainingRun:
    """One call of train_lora_sft / train_lora_dpo: where the adapter goes, the knobs, the
    caller's hooks, and the clock, started on creation so `seconds` covers loading too.

    Creating it refuses an out_dir that exists and is not an empty directory.
    """

    def __init__(
        self,
        out_dir: Path,
        config: TrainConfig,
        on_step: Callable[[StepInfo], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_checkpoint: Callable[[StepInfo, Callable[[Path], None]], None] | None = None,
    ) -> None:
        self.started = time.monotonic()
        self.out_dir = Path(out_dir)
        self.config = config
        self.on_step = on_step
        self.should_stop = should_stop
        self.on_checkpoint = on_checkpoint
        if self.out_dir.exists() and (not self.out_dir.is_dir() or any(self.out_dir.iterdir())):
            raise conflict(f"{self.out_dir} already exists; refusing to overwrite an adapter")

    def stop_if_asked(self, step: int) -> None:
        """Raise TrainingCancelled(step) if should_stop() says so."""
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled(step)

    def train_and_save(
        self,
        model: Any,
        n_examples: int,
        batch_loss: Callable[[list[int]], BatchLoss],
        step_info: type[Info],
        *,
        examples_dropped: int,
    ) -> tuple[TrainResult, list[Info]]:
        """Train `model` on batches of example indices, then save the adapter at out_dir.

        Returns the result and one `step_info` per step: StepInfo, or a subclass whose
        extra fields are the batch's metrics. should_stop() is polled before every step
        and before saving; True raises TrainingCancelled and nothing is written.
        on_checkpoint(info, save) is called after every step; `save(dir)` writes the
        adapter as it is at that step, atomically like the final save.
        """
        config = self.config

        # schedule
        steps_per_epoch = math.ceil(n_examples / config.batch_size)
        total_steps = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
        if total_steps <= 0:
            raise bad_request("nothing to do: max_steps/epochs give 0 training steps")
        warmup_steps = int(config.warmup_ratio * total_steps)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))
        order_rng = torch.Generator().manual_seed(config.seed)

        # shuffle, batch, forward (batch_loss), backward, clip, step
        infos: list[Info] = []
        step = 0
        epoch = 0
        tokens = 0
        while step < total_steps:
            order = torch.randperm(n_examples, generator=order_rng).tolist()
            for first in range(0, len(order), config.batch_size):
                if step >= total_steps:
                    break
                self.stop_if_asked(step)
                out = batch_loss(order[first : first + config.batch_size])
                lr = scheduler.get_last_lr()[0]
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                tokens += out.tokens
                info = step_info(step, epoch, out.loss.item(), lr, total_steps, **out.metrics)
                infos.append(info)
                if self.on_step is not None and (step % config.log_every == 0 or step == total_steps):
                    self.on_step(info)
                if self.on_checkpoint is not None:
                    self.on_checkpoint(info, lambda path: save_adapter(model, Path(path)))
            epoch += 1

        self.stop_if_asked(step)
        save_adapter(model, self.out_dir)
        result = TrainResult(
            steps=step,
            final_loss=infos[-1].loss,
            losses=[i.loss for i in infos],
            out_dir=self.out_dir,
            seconds=time.monotonic() - self.started,
            examples_used=n_examples,
            examples_dropped=examples_dropped,
            trained_tokens=tokens,
        )
        return result, infos


# -----------------------------------------------------------------------------
# after the loop: the adapter, written atomically


def save_adapter(model: Any, out_dir: Path) -> None:
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


# -----------------------------------------------------------------------------
# command line (python -m trainer.sft / trainer.dpo)


def add_config_options(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """One option per TrainConfig knob (but target_modules), defaulting to `defaults`'."""
    p.add_argument("--max-steps", type=int, default=defaults.max_steps)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--lr", dest="learning_rate", metavar="LR", type=float, default=defaults.learning_rate)
    p.add_argument("--rank", type=int, default=defaults.rank)
    p.add_argument("--alpha", type=int, default=defaults.alpha)
    p.add_argument("--dropout", type=float, default=defaults.dropout)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--max-seq-len", type=int, default=defaults.max_seq_len)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio)
    p.add_argument("--grad-clip", type=float, default=defaults.grad_clip)
    p.add_argument("--log-every", type=int, default=defaults.log_every)


def config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig knobs add_config_options parsed, as keyword arguments."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "target_modules"}


def run_and_report(train: Callable[[], TrainResult], what: str) -> int:
    """Run train(); print its summary line (or the error) and return the exit status."""
    try:
        result = train()
    except TailorError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    print(
        f"saved {result.out_dir} | {result.steps} steps | final loss {result.final_loss:.4f} "
        f"| {result.examples_used} {what} used, {result.examples_dropped} dropped "
        f"| {result.seconds:.1f} s"
    )
    return 0
