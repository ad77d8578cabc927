"""What TRL's trainers do not do for Tailor, as small transformers callbacks.

- progress: rank 0 appends one JSON line per optimizer step (loss, learning rate and the
  method's own metrics such as DPO's reward margin or KTO's KL) to the run's progress
  file, which the worker turns into job events;
- cancellation: the worker creates the run's stop file; every process checks it after
  each step and all of them stop at the same step (the flag is all-reduced, else one
  rank would wait forever in the next step's gradient all-reduce);
- checkpoints: every `checkpoint_every` steps rank 0 saves the adapter as it is, atomically,
  and announces it in the progress file; the worker copies it to the blob store.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from trainer.compute.recipe import Recipe

# TRL's log keys kept as step metrics (a rename to the names the API and console show).
METRIC_KEYS = {
    "rewards/accuracies": "reward_accuracy",
    "rewards/margins": "reward_margin",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "kl": "kl",
    "mean_token_accuracy": "token_accuracy",
    "grad_norm": "grad_norm",
}


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def write_progress(path: Path, record: dict[str, Any]) -> None:
    """One line, flushed, from rank 0 only: the worker may read the file at any moment."""
    if not is_main_process():
        return
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def save_atomically(model: Any, out_dir: Path) -> None:
    """save_pretrained into a hidden sibling dir, then rename it to out_dir.

    A run killed mid-save leaves only a `.{name}.partial-*` dir, never a half-written
    adapter at out_dir; rename() is atomic within a filesystem and refuses to replace a
    non-empty directory.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        # only "default": DPO/KTO add a frozen "ref" copy, which an adapter dir must not contain
        model.save_pretrained(tmp, safe_serialization=True, selected_adapters=["default"])
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _any_rank(flag: bool) -> bool:
    """True on every process if it is True on any (a no-op without torch.distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class JobCallback(TrainerCallback):
    def __init__(self, recipe: Recipe, unwrapped_model: Callable[[], Any]) -> None:
        self.recipe = recipe
        self.unwrapped_model = unwrapped_model
        self.cancelled = False
        self.losses: list[float] = []
        self.tokens = 0
        self.train_seconds = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if _any_rank(Path(self.recipe.stop_path).exists()):
            self.cancelled = True
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and "train_runtime" in logs:  # the end-of-training summary
            self.train_seconds = float(logs["train_runtime"])
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        step = state.global_step
        self.losses.append(loss)
        self.tokens = int(logs.get("num_tokens", self.tokens))
        record = {
            "event": "step",
            "step": step,
            "total_steps": state.max_steps,
            "epoch": float(logs.get("epoch", state.epoch or 0.0)),
            "loss": loss,
            "learning_rate": float(logs.get("learning_rate", 0.0)),
            "metrics": {name: float(logs[key]) for key, name in METRIC_KEYS.items() if key in logs},
        }
        write_progress(Path(self.recipe.progress_path), record)
        # After the step's line, so a checkpoint carries its step's loss. The last step's
        # adapter is the result itself, saved by the run.
        every, where = self.recipe.checkpoint_every, self.recipe.checkpoint_dir
        if every and where and step % every == 0 and step < state.max_steps and is_main_process():
            path = Path(where) / f"step-{step}"
            save_atomically(self.unwrapped_model(), path)
            write_progress(
                Path(self.recipe.progress_path), {"event": "checkpoint", "step": step, "path": str(path), "loss": loss}
            )
