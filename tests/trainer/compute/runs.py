"""Running a recipe the way the worker does, for the trainer.compute tests."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from core.errors import TailorError
from trainer.compute.launch import run_training
from trainer.compute.placement import parse_devices
from trainer.compute.recipe import EvalInfo, Recipe, StepInfo, TrainResult

RANK, ALPHA = 4, 8  # not the Recipe default (8, 16): the saved adapter must follow the recipe


def make_recipe(where: Path, method: str, base: Path, rows: list[dict[str, Any]], **knobs: Any) -> Recipe:
    where.mkdir(parents=True, exist_ok=True)
    data = where / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    values: dict[str, Any] = {
        "max_steps": 4,
        "batch_size": 4,
        "learning_rate": 1e-2,  # a random 2-layer model: a visible change in 4 steps
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "max_seq_length": 128,
        **knobs,
    }
    return Recipe(
        method=method,  # type: ignore[arg-type]
        base_model_dir=str(base),
        data_path=str(data),
        out_dir=str(where / "adapters" / "out"),
        progress_path=str(where / "progress.jsonl"),
        stop_path=str(where / "STOP"),
        checkpoint_dir=str(where / "checkpoints"),
        **values,
    )


@dataclasses.dataclass
class Run:
    recipe: Recipe
    result: TrainResult
    steps: list[StepInfo]
    checkpoints: list[tuple[int, float, Path]]
    evaluations: list[EvalInfo] = dataclasses.field(default_factory=list)


def run(recipe: Recipe, devices: str = "cpu", sharding: str = "auto", **kwargs: Any) -> Run:
    """run_training on `devices`; `.recipe` is the recipe as run_training fills in the placement."""
    placement = parse_devices(devices, visible_gpus=0, bf16=False, sharding=sharding)
    recipe = recipe.placed(placement)  # as run_training fills it in
    steps: list[StepInfo] = []
    checkpoints: list[tuple[int, float, Path]] = []
    evaluations: list[EvalInfo] = []
    work = Path(recipe.progress_path).parent / "work"
    try:
        result = run_training(
            recipe,
            placement,
            work,
            on_step=steps.append,
            on_checkpoint=lambda step, loss, path: checkpoints.append((step, loss, path)),
            on_evaluation=evaluations.append,
            poll_s=0.05,
            **kwargs,
        )
    except TailorError as e:
        if e.status < 500:
            raise
        # A crash's own words go to the log only; a failing test shows them where it is read.
        tail = (work / "train.log").read_text(encoding="utf-8", errors="replace")[-6000:]
        e.add_note(f"the training process's last output:\n{tail}")
        raise
    return Run(recipe, result, steps, checkpoints, evaluations)
