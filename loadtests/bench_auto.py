"""How well "auto" training length trains: generated tasks, each trained with early stopping and
with a fixed number of epochs, scored on held-out examples.

    python -m loadtests.bench_auto            # the full table (about 20 minutes on 2 CPU cores)
    python -m loadtests.bench_auto --quick    # two small tasks, a few minutes: the wiring only

Tasks are generated here (no download) and vary what "auto" has to cope with: the data size
(40 to 300 examples), the number of labels (4 or 15 short queue codes) and the answer length
(one code, or a sentence built from the request). Each task's examples are split into training
rows and held-out rows; "auto" then splits its validation slice off the TRAINING rows only
(trainer.early_stopping), exactly as the worker does, so the held-out score is never seen by
the run. A row of the table: the steps the run took against its budget, the step whose
adapter it kept, wall time, and held-out exact match of greedy answers (SQuAD normalisation,
trainer.evaluate). The comparison rows train the same data for a fixed number of epochs
(`--fixed-epochs`, default 3: what "auto" meant for data of 34 examples or more before
early stopping) with every row used for training.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.recipes import recipe_in, write_rows
from trainer import early_stopping
from trainer import hyperparameters as hps

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "SmolLM2-135M-Instruct"

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Example:
    prompt: Messages  # ends with the user's turn
    answer: str

    def row(self) -> dict[str, Any]:
        return {"messages": [*self.prompt, {"role": "assistant", "content": self.answer}]}


# --- generated tasks -----------------------------------------------------------------------

ROUTING_SYSTEM = "You route customer support tickets. Reply with the queue code only."
# Queue code: what the ticket is about. A ticket names one of its topics in varied wording.
QUEUES: dict[str, tuple[str, ...]] = {
    "BILL-7": ("a double charge", "my invoice", "a refund", "the card payment", "an unknown fee", "my receipt"),
    "SHIP-3": ("my parcel", "the tracking number", "the courier", "a late delivery", "the shipping label", "my box"),
    "AUTH-2": ("my password", "the login page", "the two-factor code", "my locked account", "the reset email", "SSO"),
    "HW-9": ("the cracked screen", "my battery", "the power button", "the charging port", "the speaker", "my keyboard"),
    "NET-4": ("the Wi-Fi", "the VPN", "my router", "the network cable", "the DNS settings", "the firewall"),
    "PRIV-1": ("my personal data", "a data deletion request", "the cookie banner", "GDPR", "my consent", "tracking"),
    "TAX-6": ("the VAT number", "a tax form", "the sales tax", "my tax receipt", "the W-9", "the tax exemption"),
    "HR-5": ("my payslip", "the holiday request", "parental leave", "my contract", "the pension plan", "sick leave"),
    "FAC-8": ("the office heating", "a broken chair", "the meeting room", "the parking spot", "the coffee machine",
              "the lift"),
    "LEGAL-2": ("the terms of service", "a contract clause", "the NDA", "a trademark", "the licence", "a lawsuit"),
    "SALES-3": ("a bulk discount", "a price quote", "the enterprise plan", "a demo", "the reseller program",
                "a trial extension"),
    "SEC-7": ("a phishing email", "a suspicious login", "malware", "a leaked key", "the security audit",
              "a stolen laptop"),
    "DATA-9": ("the CSV export", "a database backup", "the API quota", "the data import", "a missing report",
               "the dashboard numbers"),
    "TRAIN-1": ("the onboarding course", "a certification exam", "the training video", "the workshop",
                "my course login", "the webinar"),
    "TRAVEL-4": ("my flight booking", "the hotel invoice", "a travel expense", "the train ticket", "a visa letter",
                 "the rental car"),
}  # fmt: skip
_OPENERS = (
    "I have a problem with", "Please help me with", "Quick question about", "Urgent:", "Something is wrong with",
    "Can someone look at", "I need help regarding", "Hello, this is about", "Complaint about", "Issue with",
)  # fmt: skip
_ENDINGS = (
    "", " since yesterday.", " again.", " for my whole team.", " - please hurry.", " Thanks!",
    " It started this morning.", " Ticket from the Berlin office.",
)  # fmt: skip

RESERVATION_SYSTEM = "You take restaurant reservations. Reply with the booking line only."
_NAMES = (
    "Garcia", "Okafor", "Lindqvist", "Tanaka", "Moreau", "Novak", "Haddad", "Kowalski", "Silva", "Becker",
    "Rossi", "Nguyen", "Larsen", "Petrov", "Duarte", "Ivanova", "Murphy", "Schmidt", "Costa", "Weber",
)  # fmt: skip
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_TIMES = ("12:00", "12:30", "13:00", "18:00", "18:30", "19:00", "19:30", "20:00", "20:30", "21:00")
_ASKS = (
    "Could you book a table for {n} on {day} at {time}? The name is {name}.",
    "Table for {n}, {day}, {time}, under {name} please.",
    "Hi! {name} here, we are {n} people and would like to come on {day} at {time}.",
    "I'd like a reservation: {n} guests, {day} around {time}. Name: {name}.",
    "Please reserve for {name}: {day}, {time}, party of {n}.",
    "Can we get a table on {day} at {time}? {n} of us, booking name {name}.",
)


def routing_examples(n_labels: int, rng: random.Random) -> Callable[[], Example]:
    """Draws tickets of the first n_labels queues; the answer is the queue code alone."""
    codes = list(QUEUES)[:n_labels]

    def draw() -> Example:
        code = rng.choice(codes)
        text = f"{rng.choice(_OPENERS)} {rng.choice(QUEUES[code])}{rng.choice(_ENDINGS)}"
        return Example([{"role": "system", "content": ROUTING_SYSTEM}, {"role": "user", "content": text}], code)

    return draw


def reservation_examples(rng: random.Random) -> Callable[[], Example]:
    """Draws reservation requests; the answer is a sentence copying four slots in a fixed order."""

    def draw() -> Example:
        slots = {
            "n": rng.randint(1, 9),
            "day": rng.choice(_DAYS),
            "time": rng.choice(_TIMES),
            "name": rng.choice(_NAMES),
        }
        ask = rng.choice(_ASKS).format(**slots)
        answer = f"Booked: {slots['n']} guests on {slots['day']} at {slots['time']}, name {slots['name']}."
        return Example([{"role": "system", "content": RESERVATION_SYSTEM}, {"role": "user", "content": ask}], answer)

    return draw


def order_examples(rng: random.Random) -> Callable[[], Example]:
    """Draws support tickets that mention an order number (loadtests.bench_distillation's
    workload); the answer is the number alone, the prompt the bare ticket."""
    from loadtests.bench_distillation import order_ticket
    from loadtests.ticket_routing import tickets

    texts = [t.text for t in tickets(per_queue=25, seed=rng.randrange(2**31))]

    def draw() -> Example:
        ticket = order_ticket(rng.choice(texts), rng)
        return Example([{"role": "user", "content": ticket.text}], ticket.order)

    return draw


def distinct(draw: Callable[[], Example], n: int) -> list[Example]:
    """n examples with pairwise different prompts (a held-out prompt never repeats a training one)."""
    seen: set[str] = set()
    out: list[Example] = []
    while len(out) < n:
        e = draw()
        key = e.prompt[-1]["content"]
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "routing", "reservation" or "order"
    n_train: int
    n_labels: int = 0  # routing only

    def generate(self, n_heldout: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
        """(training examples, held-out examples), disjoint prompts, the same for the same seed."""
        rng = random.Random(f"{self.name}-{seed}")
        examples = distinct(self._draws(rng), self.n_train + n_heldout)
        return examples[: self.n_train], examples[self.n_train :]

    def _draws(self, rng: random.Random) -> Callable[[], Example]:
        if self.kind == "routing":
            return routing_examples(self.n_labels, rng)
        return order_examples(rng) if self.kind == "order" else reservation_examples(rng)

    @property
    def max_new_tokens(self) -> int:
        """Enough tokens for the longest right answer (a code, a number, or a booking sentence)."""
        return 32 if self.kind == "reservation" else 8


TASKS = (
    TaskSpec("4 codes, 40 ex", "routing", 40, n_labels=4),
    TaskSpec("15 codes, 150 ex", "routing", 150, n_labels=15),
    TaskSpec("15 codes, 300 ex", "routing", 300, n_labels=15),
    TaskSpec("sentence, 40 ex", "reservation", 40),
    TaskSpec("sentence, 150 ex", "reservation", 150),
)
QUICK_TASKS = (
    TaskSpec("4 codes, 24 ex", "routing", 24, n_labels=4),
    TaskSpec("sentence, 24 ex", "reservation", 24),
)


# --- training and scoring ------------------------------------------------------------------


@dataclass
class Outcome:
    task: str
    variant: str  # "auto" or "fixed N ep"
    budget_steps: int
    steps: int
    best_step: int | None
    stop_reason: str
    validation: int  # rows held back from training
    seconds: float
    exact_match: float  # on the held-out examples

    def line(self) -> str:
        best = "-" if self.best_step is None else str(self.best_step)
        return (
            f"| {self.task} | {self.variant} | {self.budget_steps} | {self.steps} | {best} | {self.stop_reason} | "
            f"{self.validation} | {self.seconds:.0f} | {self.exact_match:.2f} |"
        )


HEADER = (
    "| task | run | budget steps | steps | best step | stopped by | validation rows | wall s | held-out exact match |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def train(
    work: Path,
    rows: list[dict[str, Any]],
    hp: hps.Resolved,
    validation: list[dict[str, Any]],
    model_dir: Path = MODEL_DIR,
) -> Any:
    """One training run of `model_dir` the way the worker launches it (one CPU process): an
    adapter, or with hp.full_parameters the whole model."""
    from trainer.compute.launch import run_training
    from trainer.compute.placement import parse_devices
    from trainer.compute.recipe import knobs

    work.mkdir(parents=True)
    recipe = recipe_in(
        work,
        "sft",
        model_dir,
        write_rows(work / "train.jsonl", rows),
        eval_data_path=str(write_rows(work / "validation.jsonl", validation)) if validation else None,
        **{**knobs(hp), "max_seq_length": 512},
    )
    return run_training(recipe, parse_devices("cpu", visible_gpus=0, bf16=False), work / "launch")


def load_trained(trained: Path) -> Any:
    """What a run saved, ready to generate: an adapter on the base model, or a whole model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not (trained / "adapter_config.json").exists():
        return AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    return PeftModel.from_pretrained(base, trained).eval()


def held_out_exact_match(trained: Path, examples: Sequence[Example], max_new_tokens: int) -> float:
    """Share of held-out examples whose greedy answer matches the reference (SQuAD normalisation)."""
    import torch
    from transformers import AutoTokenizer

    from trainer.evaluate import exact_match

    tok = AutoTokenizer.from_pretrained(MODEL_DIR, padding_side="left")
    model = load_trained(trained)
    texts = [tok.apply_chat_template(e.prompt, add_generation_prompt=True, tokenize=False) for e in examples]
    hits = 0.0
    for start in range(0, len(texts), 16):
        batch = tok(texts[start : start + 16], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        answers = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        hits += sum(exact_match(a, e.answer) for a, e in zip(answers, examples[start : start + 16], strict=True))
    return hits / len(examples)


@dataclass
class Scored:
    hp: hps.Resolved
    result: Any  # trainer.compute.recipe.TrainResult
    validation: int  # rows held back from training
    seconds: float  # training only
    exact_match: float  # on the held-out examples


def train_and_score(
    work: Path, rows: list[dict[str, Any]], heldout: Sequence[Example], hp: hps.Resolved, spec: TaskSpec, *,
    seed: int, model_dir: Path = MODEL_DIR,
) -> Scored:  # fmt: skip
    """One run on `rows` as the worker makes it ("auto": a validation slice off the training
    rows), its result scored on the held-out examples."""
    train_rows, validation = early_stopping.split_validation(rows, hp.validation_examples, seed)
    started = time.monotonic()
    result = train(work, train_rows, hp, validation, model_dir)
    seconds = time.monotonic() - started
    score = held_out_exact_match(result.out_dir, heldout, spec.max_new_tokens)
    return Scored(hp, result, len(validation), seconds, score)


def run_dir(work: Path, *parts: str) -> Path:
    """A run's own work directory, named after its task and variant."""
    return work / "-".join(parts).replace(" ", "_").replace(",", "")


def run_task(spec: TaskSpec, work: Path, *, n_heldout: int, fixed_epochs: int, seed: int) -> list[Outcome]:
    """The task trained with "auto" and with fixed epochs, each scored on the same held-out examples."""
    examples, heldout = spec.generate(n_heldout, seed)
    rows = [e.row() for e in examples]
    variants: list[tuple[str, dict[str, Any]]] = [
        ("auto", {}),
        (f"fixed {fixed_epochs} ep", {"n_epochs": fixed_epochs}),
    ]
    out = []
    for name, knobs in variants:
        hp = hps.resolve("supervised", knobs, len(rows))
        run = train_and_score(run_dir(work, spec.name, name), rows, heldout, hp, spec, seed=seed)
        r = run.result
        out.append(
            Outcome(
                spec.name,
                name,
                hp.budget_steps,
                r.steps,
                r.best_step,
                r.stop_reason,
                run.validation,
                run.seconds,
                run.exact_match,
            )
        )
        print(out[-1].line(), flush=True)
    return out


def task_parser(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """A task benchmark's command line: --quick (`quick` says what it runs), --tasks, --heldout."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{quick}: checks the wiring, not the defaults")
    parser.add_argument("--tasks", default="", help="comma-separated task indices of the full table (default: all)")
    parser.add_argument("--heldout", type=int, default=40, help="held-out examples per task")
    return parser


def chosen_tasks(
    args: argparse.Namespace, tasks: Sequence[TaskSpec], quick: Sequence[TaskSpec]
) -> tuple[Sequence[TaskSpec], int]:
    """The tasks the command line picks, and the held-out examples per task; () when the model is missing."""
    if not (MODEL_DIR / "config.json").exists():
        print(f"the base model is not prepared at {MODEL_DIR} (run `make model`)")
        return (), 0
    if args.tasks:
        return [tasks[int(i)] for i in args.tasks.split(",")], args.heldout
    return (quick, 8) if args.quick else (tasks, args.heldout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = task_parser(__doc__, "two small tasks")
    parser.add_argument("--fixed-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tasks, heldout = chosen_tasks(args, TASKS, QUICK_TASKS)
    if not tasks:
        return 1
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-auto-") as tmp:
        for spec in tasks:
            run_task(spec, Path(tmp), n_heldout=heldout, fixed_epochs=args.fixed_epochs, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
