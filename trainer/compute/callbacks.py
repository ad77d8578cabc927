"""What TRL's trainers do not do for Tailor, as small transformers callbacks.

- progress: rank 0 appends one JSON line per optimizer step (loss, learning rate and the
  method's own metrics such as DPO's reward margin or KTO's KL) to the run's progress
  file, which the worker turns into job events (GRPO: the grader's mean reward and its
  spread over the step's sampled answers, and the KL to the starting model);
- cancellation and pausing: the worker creates the run's stop (or pause) file; every
  process checks both after each step and all of them stop at the same step (the flags are
  all-reduced, else one rank would wait forever in the next step's gradient all-reduce); a
  paused run saves a checkpoint at that step first (a cancelled one saves nothing); a run
  whose worker is gone (killed: the job's next attempt resumes it elsewhere) stops as a
  cancelled one;
- checkpoints: every `checkpoint_every` steps the adapter is saved as it is, atomically
  (trainer.compute.weights: rank 0 writes, every rank gathers when the model is sharded),
  and announced in the progress file; the worker copies it to the blob store;
- the best adapter (early stopping): after each evaluation on the validation rows, a copy of
  the trainable weights is kept in memory (rank 0) when the score is the best so far (a LoRA is
  a few MB, far cheaper than a TRL checkpoint per evaluation) and the evaluation is reported;
  the run saves that copy instead of the last step's weights. Stopping itself is
  transformers' EarlyStoppingCallback: the metrics it reads are gathered over every process,
  so every rank takes the same decision.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback

from trainer.compute.launch import PARENT_ENV
from trainer.compute.recipe import EvalInfo, Recipe
from trainer.compute.weights import Snapshot, Weights, is_main_process

# TRL's log keys kept as step metrics (a rename to the names the API and console show).
METRIC_KEYS = {
    "rewards/accuracies": "reward_accuracy",
    "rewards/margins": "reward_margin",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "kl": "kl",
    "reward": "mean_reward",  # GRPO: the grader's mean over the step's sampled answers
    "reward_std": "reward_std",  # and their spread
    "mean_token_accuracy": "token_accuracy",
    "grad_norm": "grad_norm",
}


def write_progress(path: Path, record: dict[str, Any]) -> None:
    """One line, flushed, from rank 0 only: the worker may read the file at any moment."""
    if not is_main_process():
        return
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def worker_gone() -> bool:
    """The worker that started this run has exited (trainer.compute.launch.PARENT_ENV)."""
    pid = os.environ.get(PARENT_ENV)
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag True on every process if it is True on any (a no-op without torch.distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flags
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


class JobCallback(TrainerCallback):
    def __init__(self, recipe: Recipe, weights: Weights) -> None:
        self.recipe = recipe
        self.weights = weights
        self.cancelled = False
        self.paused = False
        self.losses: list[float] = []
        self.tokens = 0
        self.train_seconds = 0.0

    def step(self, state: Any) -> int:
        """The job's step number of the run's current step (a resumed job's go on)."""
        return self.recipe.step_offset + int(state.global_step)

    def total_steps(self, state: Any) -> int:
        return self.recipe.step_offset + int(state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        pause_path = self.recipe.pause_path
        stop, pause = _any_rank(
            Path(self.recipe.stop_path).exists() or worker_gone(), bool(pause_path) and Path(pause_path).exists()
        )
        if stop:
            self.cancelled = True
            control.should_training_stop = True
        elif pause and state.global_step < state.max_steps:
            # After the last step there is nothing left to pause: the run finishes.
            self.paused = True
            control.should_training_stop = True
            control.should_log = True  # the step's log line saves the pause's checkpoint

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and "train_runtime" in logs:  # the end-of-training summary
            self.train_seconds = float(logs["train_runtime"])
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        step = self.step(state)
        self.losses.append(loss)
        self.tokens = int(logs.get("num_tokens", self.tokens))
        record = {
            "event": "step",
            "step": step,
            "total_steps": self.total_steps(state),
            "epoch": float(logs.get("epoch", state.epoch or 0.0)),
            "loss": loss,
            "learning_rate": float(logs.get("learning_rate", 0.0)),
            "metrics": {name: float(logs[key]) for key, name in METRIC_KEYS.items() if key in logs},
        }
        write_progress(Path(self.recipe.progress_path), record)
        # After the step's line, so a checkpoint carries its step's loss. The last step's
        # adapter is the result itself, saved by the run; a paused run's is its checkpoint.
        every, where = self.recipe.checkpoint_every, self.recipe.checkpoint_dir
        due = bool(every) and step % every == 0 and step < self.total_steps(state)
        if where and (due or self.paused):
            path = Path(where) / f"step-{step}"
            self.weights.save(path)  # on every rank: a sharded model is gathered first
            write_progress(
                Path(self.recipe.progress_path), {"event": "checkpoint", "step": step, "path": str(path), "loss": loss}
            )


# Evaluations are compared on the validation loss, or, where answers are short
# (trainer.compute.sft.short_answers), on "answer_score": exact match first, the loss only
# between evaluations with the same exact match. Exact match is what the job is gated on
# later, but it moves in steps of one validation row and sits flat once every row is right;
# the loss breaks those ties, so a run keeps training while answers grow surer and stops
# once they no longer do. LOSS_TIE_BREAK keeps the loss's part below one row's share of
# exact match (at most trainer.early_stopping.MAX_VALIDATION = 100 rows, losses below 100).
ANSWER_SCORE = "answer_score"
LOSS_TIE_BREAK = 1e-4


class Selection(TrainerCallback):
    """How evaluations are compared: a metric (TRL's name without "eval_") and its direction.

    A callback so that it can add the derived `answer_score` to an evaluation's metrics before
    the early stopper and the trainer's best-metric bookkeeping read them (both read that dict).
    `threshold`: the least change that counts as progress for the patience; any strict
    improvement still makes a new best adapter.
    """

    def __init__(self, metric: str, greater_is_better: bool, threshold: float = 0.0) -> None:
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.threshold = threshold

    def training_args(self) -> dict[str, Any]:
        return {"metric_for_best_model": self.metric, "greater_is_better": self.greater_is_better}

    @property
    def reported(self) -> str:
        """The metric's name in results and events: "exact_match" (ties broken by the loss) or "loss"."""
        return "exact_match" if self.metric == ANSWER_SCORE else self.metric

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **_: Any
    ) -> None:
        if metrics and self.metric == ANSWER_SCORE:
            metrics[f"eval_{ANSWER_SCORE}"] = metrics["eval_exact_match"] - LOSS_TIE_BREAK * metrics["eval_loss"]


class BestAdapter(TrainerCallback):
    """Keeps the best evaluation's trainable weights (rank 0, in memory) and reports every evaluation.

    Must come after the EarlyStoppingCallback in the trainer's callbacks: it reads that
    callback's count of evaluations without progress, and transformers' `state.best_metric`
    (the best before this evaluation: the trainer updates it after the callbacks ran).
    """

    def __init__(
        self,
        recipe: Recipe,
        selection: Selection,
        weights: Weights,
        early_stopping: EarlyStoppingCallback | None,
    ) -> None:
        self.recipe = recipe
        self.selection = selection
        self.weights = weights
        self.early_stopping = early_stopping
        self.best_step: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.best: Snapshot | None = None  # set on every rank alike; its tensors on rank 0
        self.evaluations: list[dict[str, Any]] = []

    @property
    def waiting(self) -> int:
        """Evaluations in a row without progress (the early stopper's count)."""
        return self.early_stopping.early_stopping_patience_counter if self.early_stopping else 0

    @property
    def stopped_early(self) -> bool:
        return self.early_stopping is not None and self.waiting >= self.early_stopping.early_stopping_patience

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **_: Any
    ) -> None:
        if not metrics:
            return
        scores = {k.removeprefix("eval_"): float(v) for k, v in metrics.items() if _is_score(k, v)}
        value = scores[self.selection.metric]
        scores.pop(ANSWER_SCORE, None)  # derived from the two below; results and events show those
        best = state.best_metric
        improved = best is None or (value > best if self.selection.greater_is_better else value < best)
        step = self.recipe.step_offset + state.global_step
        if improved:  # the metrics are gathered over every rank, so every rank agrees
            self.best_step, self.best_metrics = step, scores
            self.best = self.weights.snapshot()
        self.evaluations.append({"step": step, "metrics": scores})
        info = EvalInfo(
            step=step,
            metrics=scores,
            improved=improved,
            best_step=self.best_step or step,
            evaluations_without_improvement=self.waiting,
            patience=self.recipe.patience,
            total_steps=self.recipe.step_offset + state.max_steps,
        )
        write_progress(Path(self.recipe.progress_path), {"event": "evaluation", **asdict(info)})


# What an evaluation reports beyond scores: timings, not measures of the model.
_NOT_SCORES = ("runtime", "samples_per_second", "steps_per_second", "epoch", "num_tokens")


def _is_score(key: str, value: Any) -> bool:
    return key.startswith("eval_") and key.removeprefix("eval_") not in _NOT_SCORES and isinstance(value, int | float)
