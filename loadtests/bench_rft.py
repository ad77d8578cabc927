"""Reinforcement fine-tuning benchmark: a grader's mean score on unseen prompts before and after a job.

    python -m loadtests.bench_rft [--task prefix --task tag] [--steps 40] [--json out.json]

Starts its own Tailor (child vLLM engine + trainer worker) and drives it with the official
`openai` SDK, as a tenant would: per task it uploads RFT rows (a training file and a
validation file of other prompts), creates a `reinforcement` job with a `string_check` grader,
waits for it, and reads the job's own evaluation: the grader's mean score of the base model's
and of the trained adapter's greedy answers to the validation prompts (before, after). The job
report's chart (`GET /v1/fine_tuning/jobs/{id}/report.png`, with the reward curve: the step
events' mean grader score over the sampled answers) is saved as <out-dir>/rft_<task>.png.

The tasks are output formats the prompt asks for and the base model (SmolLM2-135M-Instruct)
seldom follows; the questions are generated here (`questions`: templates x fillers), split so
that no validation question is trained on. A reinforcement row has no answer to its last
turn, so the format is asked for in words, and may be shown once before it (an earlier
exchange, as OpenAI's rows allow: `Demonstration`, in every row or every n-th):

- prefix: the system prompt asks for replies that start with `ANSWER:` (grader: the reply
  contains it, `like`);
- codeword: the user's turn asks for the row's code word first (grader: the reply contains
  the row's `{{ item.code }}`): the reference differs per row;
- ok_case: the system prompt asks for `OK:` first and the rows show an answer starting
  `Ok:` (grader: contains `OK:`);
- codeword_case: as codeword, and the rows show an answer that says the code word in
  lower case (`The code word is oak.`).

The graders are case-sensitive: in the last two a model that copies the demonstration
scores 0, one that does what the prompt asks scores 1. Answers are cut at
--max-completion-length tokens both while training and when graded, so "contains" means
"near the start". The same hyperparameters serve every task: by default 6 steps of 2
prompts x 8 sampled answers of 6 tokens, LoRA (auto's rank) at 40 x the reinforcement base
rate (2e-3): GRPO only learns from groups whose answers scored differently, and a few steps
have to move far.

Measured on the 2-core CPU (the shipped trainer, trainer.compute.launch, and greedy answers
to 8 unseen questions) - the goal being at most 0.3 before and at least 0.8 after:
- codeword (16 training rows): 0.375 before, 1.0 after 6 steps (mean reward per step 0.06,
  0.25, 0.75, 0.62, 0.94, 0.94; 504 s of training on a machine shared with other runs);
  through Tailor (tests/integration/test_reinforcement_live.py, the same rows and settings)
  0.375 before, 0.875 after, 278 s of training;
- prefix: the base model's sampled answers never carried the marker (mean reward 0 in each
  of 5 steps), so there was nothing to learn from: a reinforcement job needs a task the
  model already gets right some of the time. Showing the format in a quarter of the rows
  (tried, not kept as a task: `ANSWER: Blue.`) made 79% of the sampled answers to those rows carry it, yet 6 steps
  that drew shown rows in their first step only did not carry it over to the others (0.25
  before and after on unseen rows, 2 of 8 of them shown; 0.0 and 0.0 shown none);
- ok_case (40 training rows): the base model's greedy answers neither copy `Ok:` nor say
  `OK:` (0.0 before), 6% of its sampled answers say `OK:`; mean reward per step 0.0, 0.0,
  0.06, 0.12, 0.88, 1.0, then 1.0 after (`OK: Alaska.`, `OK: Key.`), 254 s of training
  (two runs side by side). Unseen questions asked without the demonstration: 0.0 before,
  0.125 after: it learned the format where the prompt shows one, not in general;
- codeword_case (40 training rows): 0.125 before (greedy answers copy the lower case:
  `The code word is zebra`), 6% of sampled answers right; mean reward per step 0.0, 0.25,
  0.12, 0.56, 0.44, 0.31, then 0.875 after (`The code word MAPLE first`), 370 s of training
  (side by side with ok_case). Without the demonstration: 0.375 before and after.
Both case tasks met the goal with the same settings; neither carried the format over to
prompts that show no example. Through Tailor (`python -m loadtests.bench_rft --task ok_case
--task codeword_case`, the defaults, the jobs' own evaluation on the engine; 343 s in all on
an otherwise idle machine): ok_case 0.0 -> 1.0, mean reward per step 0.0, 0.0, 0.06, 0.19,
0.88, 1.0, 72 s between the first and last step (156 s for the job); codeword_case 0.0 ->
0.875, 0.12, 0.19, 0.44, 0.62, 0.94, 0.94, 87 s (146 s); both promoted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("prefix", "codeword", "ok_case", "codeword_case")
# Question templates x fillers: distinct, short questions a small model answers in a sentence.
_TEMPLATES = (
    ("What colour is {}?", ("the sky", "grass", "snow", "a banana", "coal", "a tomato", "the sea", "milk")),
    ("Name something made of {}.", ("wood", "glass", "paper", "metal", "wool", "stone", "plastic", "clay")),
    ("Where does {} live?", ("a fish", "a bird", "a bee", "a bear", "a camel", "a penguin", "a frog", "an owl")),
    ("What is {} used for?", ("a spoon", "a key", "a ladder", "a pen", "a towel", "a lamp", "a map", "a clock")),
    ("How many {} are in a year?", ("months", "weeks", "days", "seasons", "quarters", "fortnights", "halves", "hours")),
    ("What sound does {} make?", ("a dog", "a cat", "a cow", "a duck", "a sheep", "a horse", "a lion", "a bell")),
)


def questions() -> list[str]:
    return [template.format(filler) for template, fillers in _TEMPLATES for filler in fillers]


@dataclass(frozen=True)
class Demonstration:
    """An earlier exchange a row shows before its question (OpenAI's rows may carry assistant
    turns): the format done once, in the rows whose index is a multiple of `every`."""

    question: str
    answer: str
    every: int = 1

    def shown_in(self, index: int) -> bool:
        return index % self.every == 0


@dataclass(frozen=True)
class FormatTask:
    name: str
    system: str | None  # the system prompt that asks for the format, if the task has one
    ask: Callable[[str, dict[str, Any]], str]  # the user's turn, from the question and the row's fields
    fields: Callable[[int], dict[str, Any]]  # the row's fields for the grader, from its index
    grader: dict[str, Any]
    demonstration: Demonstration | None = None

    def row(self, question: str, index: int) -> dict[str, Any]:
        """One RFT row: messages ending with the user's turn (no answer to it: a reinforcement
        row has none; a demonstrated exchange may come first), plus the fields the grader reads."""
        extra = self.fields(index)
        messages = [{"role": "system", "content": self.system}] if self.system else []
        shown = self.demonstration
        if shown is not None and shown.shown_in(index):
            messages += [{"role": "user", "content": shown.question}, {"role": "assistant", "content": shown.answer}]
        messages.append({"role": "user", "content": self.ask(question, extra)})
        return {"messages": messages, **extra}


def _contains(name: str, reference: str) -> dict[str, Any]:
    """A string_check grader: the sampled answer contains `reference` (case matters)."""
    return {
        "type": "string_check",
        "name": name,
        "input": "{{ sample.output_text }}",
        "reference": reference,
        "operation": "like",
    }


CODE_WORDS = ("ZEBRA", "MAPLE", "COMET", "TULIP", "RIVER", "AMBER", "FALCON", "CEDAR")
# The demonstrated question; it is none of the generated ones, so no unseen question is shown.
SHOWN_QUESTION = "Name a colour."


def say_code_word(question: str, extra: dict[str, Any]) -> str:
    return f"{question} Say the code word {extra['code']} first."


def code_word(index: int) -> dict[str, Any]:
    return {"code": CODE_WORDS[index % len(CODE_WORDS)]}


FORMAT_TASKS = {
    "prefix": FormatTask(
        "prefix",
        "Always start your reply with 'ANSWER:'.",
        lambda question, _: question,
        lambda _: {},
        _contains("starts with the marker", "ANSWER:"),
    ),
    "codeword": FormatTask(
        "codeword", None, say_code_word, code_word, _contains("says the row's code word", "{{ item.code }}")
    ),
    # The rows show the format once, in the wrong case; the graders are case-sensitive.
    "ok_case": FormatTask(
        "ok_case",
        "Always start your reply with 'OK:'.",
        lambda question, _: question,
        lambda _: {},
        _contains("starts with the marker", "OK:"),
        Demonstration(SHOWN_QUESTION, "Ok: Blue."),
    ),
    "codeword_case": FormatTask(
        "codeword_case",
        None,
        say_code_word,
        code_word,
        _contains("says the row's code word", "{{ item.code }}"),
        Demonstration(say_code_word(SHOWN_QUESTION, {"code": "OAK"}), "The code word is oak. Blue."),
    ),
}


def split_rows(task: FormatTask, heldout: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, validation rows): the generated questions shuffled, the last `heldout` kept unseen."""
    asked = questions()
    if not 0 < heldout < len(asked):
        raise ValueError(f"heldout must be between 1 and {len(asked) - 1}")
    random.Random(seed).shuffle(asked)
    rows = [task.row(q, i) for i, q in enumerate(asked)]
    return rows[:-heldout], rows[-heldout:]


def jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@dataclass
class TaskResult:
    task: str
    job_id: str
    status: str
    train_prompts: int
    heldout_prompts: int
    steps: int
    score_before: float | None
    score_after: float | None
    decision: str | None
    job_seconds: float  # from creating the job to its end: training, evaluation, registration
    train_seconds: float | None  # first to last training step event
    rewards: list[float] = field(default_factory=list)  # mean_reward per step
    png: str | None = None


@dataclass
class Report:
    hyperparameters: dict[str, Any]
    tasks: list[TaskResult]
    wall_seconds: float = 0.0


def reward_events(events: Sequence[Any]) -> tuple[list[float], float | None]:
    """(mean reward per step, seconds from the first step's event to the last) from a job's
    events in any order (the SDK's objects: .data and .created_at)."""
    steps = sorted(
        (e.data["step"], e.created_at, e.data["mean_reward"])
        for e in events
        if isinstance(e.data, dict) and "step" in e.data and "mean_reward" in e.data
    )
    by_step = {step: (at, reward) for step, at, reward in steps}
    if not by_step:
        return [], None
    times = [at for at, _ in by_step.values()]
    return [reward for _, reward in by_step.values()], float(max(times) - min(times))


def rows_table(report: Report) -> str:
    out = [
        "| task | train / held-out prompts | steps | score before | score after | decision | train s | job s |",
        "|---|--:|--:|--:|--:|---|--:|--:|",
    ]
    for t in report.tasks:
        before = "n/a" if t.score_before is None else f"{t.score_before:.3f}"
        after = "n/a" if t.score_after is None else f"{t.score_after:.3f}"
        train = "n/a" if t.train_seconds is None else f"{t.train_seconds:.0f}"
        out.append(
            f"| {t.task} | {t.train_prompts} / {t.heldout_prompts} | {t.steps} | {before} | {after} "
            f"| {t.decision or t.status} | {train} | {t.job_seconds:.0f} |"
        )
    met = [t for t in report.tasks if (t.score_before or 0) <= 0.3 and (t.score_after or 0) >= 0.8]
    out += [
        "",
        f"Hyperparameters: {json.dumps(report.hyperparameters)}. Goal (before <= 0.3, after >= 0.8) "
        f"met on {len(met)} of {len(report.tasks)} task(s). Wall time {report.wall_seconds:.0f} s.",
    ]
    out += [f"Reward curve of {t.task}: {t.png}" for t in report.tasks if t.png]
    return "\n".join(out)


def hyperparameters_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "group_size": args.group_size,
        "max_completion_length": args.max_completion_length,
        "learning_rate_multiplier": args.learning_rate_multiplier,
        "beta": args.beta,
    }


def all_events(client: Any, job_id: str) -> list[Any]:
    """Every event of the job (the list pages newest first)."""
    return list(itertools.chain.from_iterable(client.fine_tuning.jobs.list_events(job_id, limit=100).iter_pages()))


def run_task(client: Any, server: Any, key: str, task: FormatTask, args: argparse.Namespace) -> TaskResult:
    import httpx

    from loadtests.bench_distillation import wait_for_job
    from loadtests.launcher import BASE_MODEL, progress

    train, heldout = split_rows(task, args.heldout)
    train_file = client.files.create(file=(f"{task.name}.jsonl", jsonl(train)), purpose="fine-tune")
    val_file = client.files.create(file=(f"{task.name}-unseen.jsonl", jsonl(heldout)), purpose="fine-tune")
    started = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=train_file.id,
        validation_file=val_file.id,
        suffix=f"rft-{task.name}",
        seed=args.seed,
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": task.grader, "hyperparameters": hyperparameters_of(args)},
        },
    )
    progress(f"{task.name}: job {job.id}, {len(train)} training prompts, {len(heldout)} unseen")
    job = wait_for_job(client, job.id)
    job_seconds = time.monotonic() - started
    rewards, train_seconds = reward_events(all_events(client, job.id))
    auth = {"Authorization": f"Bearer {key}"}
    base = f"{server.url}/v1/fine_tuning/jobs/{job.id}"
    evaluation = httpx.get(f"{base}/evaluation", headers=auth, timeout=60)
    before = after = None
    if evaluation.status_code == 200:
        body = evaluation.json()
        before = body["baseline"].get("grader_score")
        after = body["candidate"].get("grader_score")
    png = None
    chart = httpx.get(f"{base}/report.png", headers=auth, timeout=60)
    if chart.status_code == 200:
        path = Path(args.out_dir) / f"rft_{task.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(chart.content)
        png = str(path)
    return TaskResult(
        task=task.name,
        job_id=job.id,
        status=str(job.status),
        train_prompts=len(train),
        heldout_prompts=len(heldout),
        steps=len(rewards),
        score_before=before,
        score_after=after,
        decision=(job.metadata or {}).get("tailor_decision"),
        job_seconds=round(job_seconds, 1),
        train_seconds=None if train_seconds is None else round(train_seconds, 1),
        rewards=[round(r, 3) for r in rewards],
        png=png,
    )


def measure(args: argparse.Namespace) -> Report:
    import openai

    from loadtests.admin_api import create_tenant_key
    from loadtests.launcher import MODEL_DIR
    from loadtests.local_server import local_tailor

    started = time.monotonic()
    results = []
    with local_tailor(MODEL_DIR) as server:
        key = create_tenant_key(server, "acme")
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=300)
        for name in args.task or TASKS:
            results.append(run_task(client, server, key, FORMAT_TASKS[name], args))
    return Report(hyperparameters_of(args), results, round(time.monotonic() - started, 1))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from loadtests.bench_cli import doc_parser

    p = doc_parser("python -m loadtests.bench_rft", __doc__)
    p.add_argument("--task", action="append", choices=TASKS, help="a task to run (repeatable; default: all)")
    p.add_argument("--heldout", type=int, default=8, help="unseen questions (the validation file)")
    p.add_argument("--steps", type=int, default=6, help="the job's max_steps")
    p.add_argument("--batch-size", type=int, default=2, help="prompts per step")
    p.add_argument("--group-size", type=int, default=8, help="answers sampled per prompt")
    p.add_argument("--max-completion-length", type=int, default=6, help="tokens per sampled (and graded) answer")
    p.add_argument("--learning-rate-multiplier", type=float, default=40.0, help="x the reinforcement base rate, 5e-5")
    p.add_argument("--beta", type=float, default=0.04, help="KL penalty towards the starting model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=".", help="where the reward-curve charts are written")
    p.add_argument("--json", type=Path, help="also write the whole report here")
    p.add_argument("--quick", action="store_true", help="a wiring check: one task, 2 steps, 4 unseen questions")
    args = p.parse_args(argv)
    if args.quick:
        args.task, args.steps, args.heldout = args.task or ["prefix"], 2, 4
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from loadtests.bench_cli import run_and_report

    args = parse_args(argv)
    return run_and_report(lambda: measure(args), rows_table, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
