"""A run's trained weights, read and saved the same way whether the model is whole or sharded.

With DDP (or one process) every rank holds the whole model and rank 0 alone copies or
saves it. With FSDP each rank holds a shard: reading the weights is a collective (every
rank must call it, in the same order, or the run hangs) that assembles full tensors on
rank 0. `Weights` hides that difference from the callbacks and the final save.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Snapshot:
    """A CPU copy of the trainable weights, by parameter name; `tensors` is None off rank 0."""

    tensors: dict[str, Any] | None


class Weights:
    def __init__(self, trainer: Callable[[], Any], *, sharded: bool, tokenizer: Any = None) -> None:
        self._trainer = trainer  # the TRL trainer, once built (the callbacks exist before it)
        self.sharded = sharded
        self.tokenizer = tokenizer  # saved beside a full model (see save_atomically)

    def unwrapped(self) -> Any:
        trainer = self._trainer()
        return trainer.accelerator.unwrap_model(trainer.model)

    def snapshot(self) -> Snapshot:
        """The trainable weights now. Collective when sharded: every rank calls it."""
        model = self.unwrapped()
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        if self.sharded:
            trainer = self._trainer()
            # full tensors, offloaded to the CPU, on rank 0; the other ranks get an empty dict
            state = trainer.accelerator.get_state_dict(trainer.model)
            tensors = {k: v for k, v in state.items() if k in trainable} if is_main_process() else None
            return Snapshot(tensors)
        if not is_main_process():
            return Snapshot(None)
        return Snapshot({n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if n in trainable})

    def save(self, out_dir: Path, snapshot: Snapshot | None = None) -> None:
        """Save the model (with `snapshot`'s weights in place of its own, if given) to out_dir.

        Collective when sharded and no snapshot is given; rank 0 writes.
        """
        if snapshot is None and self.sharded:
            snapshot = self.snapshot()
        if is_main_process():
            tensors = None if snapshot is None else snapshot.tensors
            save_atomically(self.unwrapped(), out_dir, tensors, tokenizer=self.tokenizer)


def save_atomically(
    model: Any, out_dir: Path, state_dict: dict[str, Any] | None = None, *, tokenizer: Any = None
) -> None:
    """save_pretrained into a hidden sibling dir, then rename it to out_dir.

    A run killed mid-save leaves only a `.{name}.partial-*` dir, never a half-written
    adapter at out_dir; rename() is atomic within a filesystem and refuses to replace a
    non-empty directory. `state_dict`: trainable weights to save instead of the model's own
    (a LoRA's saved from them; a full model's frozen weights, if any, from the model).
    A full model is saved with `tokenizer`, so that the directory is servable on its own (an
    adapter uses its base model's).
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    options: dict[str, Any] = {"safe_serialization": True}
    if hasattr(model, "peft_config"):
        # only "default": DPO/KTO add a frozen "ref" copy, which an adapter dir must not contain
        options["selected_adapters"] = ["default"]
    if state_dict is not None:
        options["state_dict"] = {**model.state_dict(), **state_dict}
    try:
        model.save_pretrained(tmp, **options)
        if tokenizer is not None and not hasattr(model, "peft_config"):
            tokenizer.save_pretrained(tmp)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
