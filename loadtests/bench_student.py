"""How a smaller distillation student learns: students derived from the base model, trained
whole on generated tasks at several learning rates and lengths, scored on held-out examples.

    python -m loadtests.bench_student                        # four tasks, the student's defaults
    python -m loadtests.bench_student --tasks 0,3 --lr-multipliers 0.1,0.5,1,2 --lengths 3
    python -m loadtests.bench_student --quick                # one small task: the wiring only

A student (method.distillation.student) is the base model with decoder layers removed
(adapters.derived_model, `--layers`: every-other by default, 15 of SmolLM2-135M-Instruct's 30),
every weight trained (finetuning_type "full") the way the worker trains it: the hyperparameters
of a distillation job with a student (trainer.hyperparameters.resolve(..., student=True): a
learning rate multiplier scales the student's base rate, hyperparameters.STUDENT_LEARNING_RATE),
the same training process (trainer.compute.launch.run_training), "auto" length with its
validation slice split off the training rows. The tasks are loadtests.bench_auto's (queue codes,
booking sentences, order numbers of loadtests.bench_distillation's tickets); the answers to learn
are the tasks' right answers, standing in for a teacher's. A row of the table: the task, the
learning rate, the length (auto: early stopping within its budget; N ep: N fixed passes), the
steps taken against the budget, what stopped the run, wall time of the training, the last step's
training loss and held-out exact match of the student's greedy answers.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests import bench_auto
from loadtests.bench_auto import MODEL_DIR, TaskSpec
from trainer import hyperparameters as hps

TASKS = (
    bench_auto.TASKS[0],  # 4 codes, 40 examples
    bench_auto.TASKS[1],  # 15 codes, 150 examples
    bench_auto.TASKS[3],  # booking sentences, 40 examples
    TaskSpec("order number, 80 ex", "order", 80),
)
QUICK_TASKS = (TaskSpec("4 codes, 24 ex", "routing", 24, n_labels=4),)
AUTO = "auto"


@dataclass(frozen=True)
class Row:
    task: str
    length: str  # "auto" or "N ep"
    run: bench_auto.Scored

    def line(self) -> str:
        hp, r = self.run.hp, self.run.result
        return (
            f"| {self.task} | {hp.learning_rate:.0e} | {self.length} | {r.steps}/{hp.budget_steps} | "
            f"{r.stop_reason} | {self.run.seconds:.0f} | {r.final_loss:.3f} | {self.run.exact_match:.2f} |"
        )


HEADER = (
    "| task | learning rate | length | steps/budget | stopped by | wall s | final training loss | "
    "held-out exact match |\n|---|---|---|---|---|---|---|---|"
)


def student_knobs(multiplier: float, length: str) -> dict[str, Any]:
    """A student job's hyperparameters: its learning rate multiplier, and "auto" length or N epochs."""
    knobs: dict[str, Any] = {"finetuning_type": hps.FULL, "learning_rate_multiplier": multiplier}
    return knobs if length == AUTO else {**knobs, "n_epochs": int(length)}


def run_task(
    spec: TaskSpec, student: Path, work: Path, *, multipliers: Sequence[float], lengths: Sequence[str],
    n_heldout: int, seed: int,
) -> list[Row]:  # fmt: skip
    """The student trained on the task at every multiplier and length, each scored on the same held-out examples."""
    examples, heldout = spec.generate(n_heldout, seed)
    rows = [e.row() for e in examples]
    out = []
    for multiplier in multipliers:
        for length in lengths:
            hp = hps.resolve("distillation", student_knobs(multiplier, length), len(rows), student=True)
            where = bench_auto.run_dir(work, spec.name, f"{multiplier:g}x", length)
            run = bench_auto.train_and_score(where, rows, heldout, hp, spec, seed=seed, model_dir=student)
            out.append(Row(spec.name, AUTO if length == AUTO else f"{length} ep", run))
            print(out[-1].line(), flush=True)
    return out


def parse_lengths(raw: str) -> list[str]:
    """Comma-separated run lengths: "auto" or a positive number of epochs each."""
    lengths = [x.strip() for x in raw.split(",") if x.strip()]
    bad = [x for x in lengths if x != AUTO and not (x.isdigit() and int(x) > 0)]
    if bad or not lengths:
        raise argparse.ArgumentTypeError(f'lengths are "auto" or epoch counts, got {raw!r}')
    return lengths


def parse_multipliers(raw: str) -> list[float]:
    try:
        multipliers = [float(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        multipliers = []
    if not multipliers or any(m <= 0 for m in multipliers):
        raise argparse.ArgumentTypeError(f"multipliers are positive numbers, got {raw!r}")
    return multipliers


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_auto.task_parser(__doc__, "one small task")
    parser.add_argument("--layers", default="every-other", help="the student's layers (adapters.layer_selection)")
    parser.add_argument(
        "--lr-multipliers",
        type=parse_multipliers,
        default=[1.0],
        help=f"learning_rate_multiplier values, of the student's base rate {hps.STUDENT_LEARNING_RATE:g} (default: 1)",
    )
    parser.add_argument(
        "--lengths", type=parse_lengths, default=[AUTO], help='"auto" and/or epoch counts (default: auto)'
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tasks, heldout = bench_auto.chosen_tasks(args, TASKS, QUICK_TASKS)
    if not tasks:
        return 1
    from adapters.derived_model import derive_model

    with tempfile.TemporaryDirectory(prefix="bench-student-") as tmp:
        derived = derive_model(MODEL_DIR, Path(tmp) / "student", args.layers)
        print(f"Student: {len(derived.kept)} of {derived.source_layers} layers of {MODEL_DIR.name}\n", flush=True)
        print(HEADER, flush=True)
        for spec in tasks:
            run_task(
                spec, derived.out, Path(tmp), multipliers=args.lr_multipliers, lengths=args.lengths,
                n_heldout=heldout, seed=args.seed,
            )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
