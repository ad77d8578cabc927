"""KTO benchmark: held-out rate of good-rated behaviour before and after, thumbs only.

    python -m loadtests.bench_kto [--quick]

The task is ticket routing (loadtests.ticket_routing): the system prompt asks for the queue
code only, and the good behaviour is an answer that is exactly the ticket's code
(`is_good`); the base model answers with prose instead. The feedback is thumbs alone, no
corrections: every training ticket has three rated answers, labelled by `is_good` -

- the base model's own reply (generated on the engine, as it would have been served),
- a bare code reply naming the right queue (thumbs up),
- a bare code reply naming another queue (thumbs down),

so a good answer is never shown as a fix for a bad one; KTO has to find what the thumbs-up
answers share. Training goes through the shipped trainer (trainer.compute.launch, KTO on
the CPU); held-out tickets are other (opening, detail) combinations than the training ones.
Both rates come from greedy answers on one vLLM engine, as the trainer's evaluation gets
them: the base under its served name, then base + the adapter under `kto-bench`, with
max_tokens sized from the codes by trainer.compute.evaluation.plan. The engine is started
once and stays up (idle) while training runs, as the worker keeps its own engine on a CPU host.

Hyperparameters: trainer.hyperparameters.resolve("kto", {"max_steps": N,
"learning_rate_multiplier": M}, rows): batch size, LoRA rank and alpha and beta as "auto"
picks them. Not the length: auto's is early stopping within a 20-epoch budget, hundreds of
steps, minutes too many for a CPU benchmark, so the run takes a fixed --steps. And so not the
rate either: auto's (5e-5 for KTO) is paced for that length; --learning-rate-multiplier 4
(2e-4, the supervised rate) covers in tens of steps the distance auto's rate covers in a
few hundred. Both are flags; nothing is chosen on the held-out tickets.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtests import ticket_routing as task

if TYPE_CHECKING:
    from trainer.compute.engine import EngineClient

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "SmolLM2-135M-Instruct"
ADAPTER = "kto-bench"
# The base model's replies that get rated: long enough to be whole served answers (they are
# prose: the rating is the same wherever they are cut), short enough to generate in seconds.
DEPLOYED_MAX_TOKENS = 64
# (opening, detail) combinations per queue in loadtests.ticket_routing: 5 x 5.
COMBINATIONS = 25


def is_good(answer: str, ticket: task.Ticket) -> bool:
    """The rated behaviour: the ticket's queue code and nothing else, as the system prompt asks."""
    return answer.strip() == ticket.queue


def split_tickets(
    train_per_queue: int, heldout_per_queue: int, seed: int = 0
) -> tuple[list[task.Ticket], list[task.Ticket]]:
    """(training, held-out) tickets: per queue, distinct (opening, detail) combinations on each side."""
    if train_per_queue + heldout_per_queue > COMBINATIONS:
        raise ValueError(f"at most {COMBINATIONS} tickets per queue in all")
    rng = random.Random(seed)
    train: list[task.Ticket] = []
    heldout: list[task.Ticket] = []
    for code, (openings, details) in task.QUEUES.items():
        pairs = [(o, d) for o in openings for d in details]
        rng.shuffle(pairs)
        tickets = [task.Ticket(f"{o} {d}.", code) for o, d in pairs]
        train += tickets[:train_per_queue]
        heldout += tickets[train_per_queue : train_per_queue + heldout_per_queue]
    rng.shuffle(train)
    return train, heldout


def rated_rows(train: list[task.Ticket], deployed: list[str], seed: int = 0) -> list[dict[str, Any]]:
    """KTO rows: for every ticket the model's reply, the right code and a wrong code, labelled by is_good.

    Duplicates (the model happened to answer a bare code) are rated once, as the dataset
    builder keeps them; empty replies were never shown, so nobody rated them. The rows are
    shuffled, as a feedback log interleaves tickets and ratings.
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for ticket, reply in zip(train, deployed, strict=True):
        wrong = rng.choice([code for code in task.QUEUES if code != ticket.queue])
        for answer in dict.fromkeys(a for a in (reply.strip(), ticket.queue, wrong) if a):
            rows.append({"prompt": ticket.messages(), "completion": answer, "label": is_good(answer, ticket)})
    rng.shuffle(rows)
    return rows


def good_rate(answers: list[str], tickets: list[task.Ticket]) -> float:
    return sum(is_good(a, t) for a, t in zip(answers, tickets, strict=True)) / max(1, len(tickets))


def bare_rate(answers: list[str]) -> float:
    """Answers that are one bare word, as every thumbs-up answer is (a queue code, right or
    wrong, or an invented one): the form of the good behaviour, apart from its content."""
    return sum(bool(a.strip()) and len(a.split()) == 1 for a in answers) / max(1, len(answers))


@dataclass(frozen=True)
class Trained:
    steps: int
    train_seconds: float
    adapter: Path
    knobs: dict[str, Any]


def train(
    rows: list[dict[str, Any]], steps: int, work: Path, *, multiplier: float = 1.0, model_dir: Path = MODEL_DIR
) -> Trained:
    """KTO through the shipped trainer on the CPU, every knob but the length and the rate as "auto" picks it."""
    from loadtests.recipes import recipe_in, write_rows
    from trainer.compute.launch import run_training
    from trainer.compute.placement import parse_devices
    from trainer.compute.recipe import knobs
    from trainer.hyperparameters import resolve

    hp = resolve("kto", {"max_steps": steps, "learning_rate_multiplier": multiplier}, len(rows))
    work.mkdir(parents=True, exist_ok=True)
    recipe = recipe_in(work, "kto", model_dir, write_rows(work / "rated.jsonl", rows), **knobs(hp))
    result = run_training(recipe, parse_devices("cpu", visible_gpus=0, bf16=False), work / "run")
    knobs = {k: hp.as_dict()[k] for k in ("learning_rate_multiplier", "batch_size", "lora_rank", "lora_alpha", "beta")}
    knobs["learning_rate"] = hp.learning_rate
    return Trained(result.steps, result.train_seconds, Path(recipe.out_dir), knobs)


def bench(client: EngineClient, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The whole benchmark on a running engine: rate, train, rate again."""
    from transformers import AutoTokenizer

    from trainer.compute.evaluation import plan
    from trainer.evaluate import EvalExample

    model_dir = Path(args.model_dir)
    train_tickets, heldout = split_tickets(args.per_queue, args.heldout_per_queue)
    prompts = [t.messages() for t in heldout]
    # The evaluation's answer budget, from the references (the right codes).
    examples = [EvalExample(t.messages(), t.queue) for t in heldout]
    max_tokens = plan(AutoTokenizer.from_pretrained(model_dir), examples, args.max_model_len).max_tokens

    deployed = client.answers(client.served_model, [t.messages() for t in train_tickets], DEPLOYED_MAX_TOKENS)
    rows = rated_rows(train_tickets, deployed)
    before = client.answers(client.served_model, prompts, max_tokens)
    trained = train(rows, args.steps, work / "train", multiplier=args.learning_rate_multiplier, model_dir=model_dir)
    with client.adapters({ADAPTER: trained.adapter}):
        after = client.answers(ADAPTER, prompts, max_tokens)
    return {
        "task": "ticket routing, thumbs only",
        "train_prompts": len(train_tickets),
        "rows": len(rows),
        "rows_good": sum(r["label"] for r in rows),
        "heldout_prompts": len(heldout),
        "steps": trained.steps,
        "train_seconds": round(trained.train_seconds, 1),
        "hyperparameters": trained.knobs,
        "max_tokens": max_tokens,
        "good_rate_before": round(good_rate(before, heldout), 3),
        "good_rate_after": round(good_rate(after, heldout), 3),
        "bare_rate_before": round(bare_rate(before), 3),
        "bare_rate_after": round(bare_rate(after), 3),
        "samples": [
            {"ticket": t.text, "before": b, "after": a}
            for t, b, a in list(zip(heldout, before, after, strict=True))[:3]
        ],
    }


def table(r: dict[str, Any]) -> str:
    return (
        "| train prompts | rated rows (good/bad) | steps | train s | held-out prompts | good before | good after "
        "| bare code before | bare code after |\n"
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
        f"| {r['train_prompts']} | {r['rows']} ({r['rows_good']}/{r['rows'] - r['rows_good']}) | {r['steps']} "
        f"| {r['train_seconds']} | {r['heldout_prompts']} | {r['good_rate_before']:.1%} | {r['good_rate_after']:.1%} "
        f"| {r['bare_rate_before']:.1%} | {r['bare_rate_after']:.1%} |"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(MODEL_DIR))
    p.add_argument("--per-queue", type=int, default=6, help="training tickets per queue (3 rated answers each)")
    p.add_argument("--heldout-per-queue", type=int, default=10)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps (batch size: auto's)")
    p.add_argument("--learning-rate-multiplier", type=float, default=4.0, help="x the KTO base rate, 5e-5")
    p.add_argument("--quick", action="store_true", help="a wiring check: 1 + 1 tickets per queue, 2 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.per_queue, args.heldout_per_queue, args.steps = 1, 1, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from core.config import Settings
    from trainer.compute.engine import OwnEngine

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tailor-bench-kto-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "engine", base_model_path=Path(args.model_dir), engine_kv_cache_gib=1)
        args.max_model_len = settings.engine_max_model_len
        own = OwnEngine(settings)
        client = None
        try:
            client = own.start()
            engine_seconds = time.monotonic() - started
            result = bench(client, args, Path(tmp))
        finally:
            if client is not None:
                client.close()
            own.stop()
    result["engine_start_seconds"] = round(engine_seconds, 1)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
