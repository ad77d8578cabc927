"""What one training run is told, and what it answers.

A `Recipe` is written as JSON by the worker and read by every process of the training run
(`python -m trainer.compute.launch RECIPE.json`), so it holds plain values only. The job's
knobs default to trainer.hyperparameters' values; the rest are the run's own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trainer import hyperparameters as hp

if TYPE_CHECKING:
    from trainer.compute.placement import Placement

Method = Literal["sft", "dpo", "kto", "grpo"]


@dataclass
class Recipe:
    method: Method
    base_model_dir: str
    data_path: str  # JSONL rows in the method's shape (see trainer.compute.sft/dpo/kto/grpo)
    out_dir: str  # where the adapter is saved, atomically; must not exist
    progress_path: str  # rank 0 appends one JSON line per step, checkpoint and the result
    stop_path: str  # the worker creates this file to cancel the run
    checkpoint_dir: str | None = None  # checkpoints go to <checkpoint_dir>/step-N
    checkpoint_every: int = 0  # steps between checkpoints; 0: none
    init_adapter_dir: str | None = None  # continue from this adapter (its shape wins)
    # The worker creates this file to pause the run: it saves a checkpoint at the step it
    # stops at (TrainingPaused). None: the run cannot be paused.
    pause_path: str | None = None
    # Steps a paused job did before this run (trainer.jobs.ResumePoint): every step number the
    # run reports, names and checks checkpoints by counts them, so the job's steps go on.
    step_offset: int = 0
    full_parameters: bool = False  # train every weight (saves a full model) instead of a LoRA

    # Early stopping (trainer.early_stopping): validation rows, in the method's shape, held back
    # from the training rows. With them the run evaluates every `eval_every` steps (and at its
    # last step), stops after `patience` evaluations without improvement (0: never stops early)
    # and saves the adapter of the best evaluation, not the last step's. epochs / max_steps are
    # then the budget.
    eval_data_path: str | None = None
    eval_every: int = 0
    patience: int = 0

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
    # GRPO: the job's grader (trainer.rewards), answers sampled per prompt, their longest length.
    grader: dict[str, Any] | None = None
    # The models its model graders may reach (trainer.reward_models.GraderModels, as JSON).
    grader_models: dict[str, Any] | None = None
    group_size: int = hp.DEFAULT_GROUP_SIZE
    max_completion_length: int = hp.DEFAULT_MAX_COMPLETION_LENGTH
    # Where the answers are sampled (trainer.compute.rollout): "engine", the engine of
    # grader_models (engine_url) with each step's LoRA loaded under `rollout_name`-<rank>-<step>;
    # "trainer", TRL's generate. The worker resolves the job's "auto" (trainer.worker.sampling).
    sampler: Literal["engine", "trainer"] = hp.SAMPLER_TRAINER
    rollout_name: str | None = None

    # Placement (trainer.compute.placement)
    device: Literal["cpu", "cuda"] = "cpu"
    processes: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    fsdp: bool = False  # shard the model over the processes (FSDP2) instead of replicating it (DDP)
    # "4bit": QLoRA, the frozen base in NF4 (CUDA and bitsandbytes only: placement.check_quantization)
    quantization: Literal["none", "4bit"] = hp.NO_QUANTIZATION

    def placed(self, placement: Placement) -> Recipe:
        """This recipe told where it runs: device, processes, precision, checkpointing, sharding."""
        return replace(
            self,
            device=placement.device,
            processes=placement.processes,
            precision=placement.precision,
            gradient_checkpointing=placement.gradient_checkpointing,
            fsdp=placement.shards(full_parameters=self.full_parameters),
        )

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


def knobs(resolved: hp.Resolved) -> dict[str, Any]:
    """The Recipe fields a job's resolved hyperparameters set (the rest are the run's own)."""
    return {
        "lora_rank": resolved.lora_rank,
        "lora_alpha": resolved.lora_alpha,
        "target_modules": resolved.target_modules,
        "learning_rate": resolved.learning_rate,
        "epochs": resolved.n_epochs,
        "max_steps": resolved.max_steps,
        "batch_size": resolved.batch_size,
        "gradient_accumulation_steps": resolved.gradient_accumulation_steps,
        "max_seq_length": resolved.max_seq_length,
        "packing": resolved.packing,
        "quantization": resolved.quantization,
        "full_parameters": resolved.full_parameters,
        "eval_every": resolved.eval_every,
        "patience": resolved.patience,
        "beta": resolved.beta if resolved.beta is not None else hp.DEFAULT_BETA,
        "group_size": resolved.group_size or hp.DEFAULT_GROUP_SIZE,
        "max_completion_length": resolved.max_completion_length or hp.DEFAULT_MAX_COMPLETION_LENGTH,
    }


@dataclass
class StepInfo:
    step: int  # 1-based optimizer steps done
    epoch: float  # passes over the data so far
    loss: float  # training loss of this step
    learning_rate: float  # the rate this step was taken with
    total_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # method extras (DPO/KTO rewards, GRPO's reward, KL)


@dataclass
class EvalInfo:
    """One evaluation on the validation rows, as the progress file reports it."""

    step: int
    metrics: dict[str, float]  # "loss", and "exact_match" for SFT; DPO/KTO add their reward metrics
    improved: bool  # the best so far: its adapter is the one that will be saved
    best_step: int
    evaluations_without_improvement: int  # the run stops when this reaches the patience
    patience: int
    total_steps: int = 0  # the budget


# Why a run ended (TrainResult.stop_reason).
STOP_BUDGET = "budget"  # every step of epochs / max_steps was taken
STOP_NO_IMPROVEMENT = "no_improvement"  # early stopping: `patience` evaluations without a better score


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
    # Early stopping (recipe.eval_data_path set); otherwise the defaults, and the adapter is the last step's.
    stop_reason: str = STOP_BUDGET
    best_step: int | None = None  # the step whose adapter was saved
    selection_metric: str | None = None  # the validation metric that chose it, e.g. "exact_match" or "loss"
    best_metrics: dict[str, float] = field(default_factory=dict)  # the validation metrics at best_step
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # {"step", "metrics"}, in order
    validation_examples: int = 0

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


class TrainingPaused(Exception):
    """The worker asked the run to pause: it saved a checkpoint at `step` (reported like every
    checkpoint) and stopped; nothing was written at out_dir. Steps count the recipe's
    step_offset; `losses` and `trained_tokens` are this run's own."""

    def __init__(self, step: int, total_steps: int, losses: list[float], trained_tokens: int) -> None:
        super().__init__(f"training paused after step {step} of {total_steps}")
        self.step, self.total_steps = step, total_steps
        self.losses, self.trained_tokens = losses, trained_tokens

    def as_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "losses": self.losses,
            "trained_tokens": self.trained_tokens,
        }
