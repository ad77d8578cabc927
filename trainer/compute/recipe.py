"""What one training run is told, and what it answers.

A `Recipe` is written as JSON by the worker and read by every process of the training run
(`python -m trainer.compute.launch RECIPE.json`), so it holds plain values only. The job's
knobs default to trainer.hyperparameters' values; the rest are the run's own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from trainer import hyperparameters as hp

Method = Literal["sft", "dpo", "kto"]


@dataclass
class Recipe:
    method: Method
    base_model_dir: str
    data_path: str  # JSONL rows in the method's shape (see trainer.compute.sft/dpo/kto)
    out_dir: str  # where the adapter is saved, atomically; must not exist
    progress_path: str  # rank 0 appends one JSON line per step, checkpoint and the result
    stop_path: str  # the worker creates this file to cancel the run
    checkpoint_dir: str | None = None  # checkpoints go to <checkpoint_dir>/step-N
    checkpoint_every: int = 0  # steps between checkpoints; 0: none
    init_adapter_dir: str | None = None  # continue from this adapter (its shape wins)
    full_parameters: bool = False  # train every weight (saves a full model) instead of a LoRA

    # The job's knobs; defaults and why: trainer.hyperparameters.
    lora_rank: int = hp.DEFAULT_LORA_RANK
    lora_alpha: int = 2 * hp.DEFAULT_LORA_RANK
    lora_dropout: float = 0.0  # feedback datasets are tiny: we want them taken verbatim
    target_modules: tuple[str, ...] | str = hp.DEFAULT_TARGET_MODULES  # or "all-linear"

    # Optimisation: AdamW, linear decay, gradient-norm clipping at 1.0 (keeps LoRA's high
    # rates from blowing up on an unlucky batch).
    learning_rate: float = hp.BASE_LEARNING_RATE["supervised"]
    epochs: int = 1
    max_steps: int | None = None  # if set, exactly this many optimizer steps (epochs ignored)
    batch_size: int = 4  # examples per optimizer step, over all processes and accumulation
    gradient_accumulation_steps: int = 1
    max_seq_length: int = hp.DEFAULT_MAX_SEQ_LENGTH
    packing: bool = False  # SFT only: pack short conversations into max_seq_length rows
    seed: int = 0
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0

    beta: float = hp.DEFAULT_BETA  # preference methods
    # KTO: weights of good and bad examples; None: balanced from the data (trainer.compute.kto).
    desirable_weight: float | None = None
    undesirable_weight: float | None = None

    # Placement (trainer.compute.placement)
    device: Literal["cpu", "cuda"] = "cpu"
    processes: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False

    @property
    def per_device_batch_size(self) -> int:
        """Examples per process and micro-step, so that batch_size is the global batch."""
        return max(1, self.batch_size // (self.processes * self.gradient_accumulation_steps))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Recipe:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        modules = values.get("target_modules", hp.DEFAULT_TARGET_MODULES)
        values["target_modules"] = modules if isinstance(modules, str) else tuple(modules)
        return cls(**values)


@dataclass
class StepInfo:
    step: int  # 1-based optimizer steps done
    epoch: float  # passes over the data so far
    loss: float  # training loss of this step
    learning_rate: float  # the rate this step was taken with
    total_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # method extras (DPO/KTO rewards, KL)


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    losses: list[float]  # one per optimizer step
    out_dir: Path
    seconds: float  # wall time of the run: loading, training, saving
    examples_used: int = 0
    examples_dropped: int = 0  # examples with nothing left to learn after encoding/truncation
    trained_tokens: int = 0
    train_seconds: float = 0.0  # the optimizer steps alone, without loading and saving
    peak_memory_bytes: int = 0  # peak accelerator memory of rank 0 (0 on the CPU)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainResult:
        return cls(**{**data, "out_dir": Path(data["out_dir"])})


class TrainingCancelled(Exception):
    """The worker asked the run to stop; nothing was written at out_dir."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training cancelled after {step} step(s); no adapter written")
        self.step = step
