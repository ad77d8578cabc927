"""Long system prompt vs the adapter distilled from it, and that adapter merged: tokens, cost,
latency, throughput, quality.

    python -m loadtests.bench_distillation [--rounds 2] [--concurrency 4] [--passes 3]

Starts its own Tailor (child vLLM engine + trainer worker). The tenant's "long prompt" is a
ticket-parsing guide with few-shot examples (find the order number in a support ticket),
about 500 tokens sent with every request. A distillation job (method "distillation",
teacher: the base model WITH that context) answers a file of training tickets, trains the
adapter `parser-lite` to answer the same WITHOUT the context, and evaluates its agreement
with the teacher on a validation file of unseen tickets.

The adapter is then merged into the base's weights (POST /v1/adapters/parser-lite/merge, not
activated) and its merged version served pinned, on an engine of its own (one serving thread,
TAILOR_DEDICATED_ENGINE_THREADS's default, as many as vLLM's CPU build gives the base engine
on 2 cores: it keeps one core for itself). The same traffic (the unseen tickets, `--rounds`
times, `--concurrency` at a time) goes through the arms, interleaved A B C D D C B A so
drift on a noisy machine hits all alike:

  A  model=<base> with the long prompt in every request
  B  model=parser-lite with the bare ticket (LoRA on the base engine)
  C  model=parser-lite@vN, the merged copy, with the bare ticket
  D  model=parser-small, the same context distilled into a student keeping every other layer
     of the base (method.distillation.student, a whole model on an engine of its own;
     loadtests.student_arm), with the bare ticket; `--no-student` leaves it out. Its job
     trains with the student's own "auto" hyperparameters (trainer.hyperparameters'
     STUDENT_LEARNING_RATE and auto length), not the adapter's `--epochs`/`--lr-multiplier`,
     unless `--student-epochs`/`--student-lr-multiplier` are given

and the table reports per arm: prompt and completion tokens per request and cost per 1K
requests (from Tailor's metering, GET /v1/usage, priced by TAILOR_PRICES: the same price
for every arm here), latency p50/p95 (client side), throughput (completion tokens and
requests per second of the arm's rounds), and quality: agreement with the teacher's answers
(exact match; the teacher's answers are recomputed here with the same greedy decoding the job
used). Accuracy against the true order number is shown too.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from core.states import TERMINAL_JOB_STATUSES, JobStatus
from loadtests import student_arm
from loadtests.admin_api import create_tenant_key
from loadtests.bench_cli import doc_parser
from loadtests.launcher import BASE_MODEL, MODEL_DIR, progress
from loadtests.local_server import LocalTailor, local_tailor
from loadtests.stats import percentile, to_ms
from loadtests.ticket_routing import tickets

ADAPTER = "parser-lite"
# Same price for every arm: the saving shown is the tokens', not a cheaper price list.
PRICES = {BASE_MODEL: {"prompt": 0.15, "completion": 0.60}, "adapter": {"prompt": 0.15, "completion": 0.60}}
GUIDE = """You are the ticket parser of Acme Support. Every ticket mentions the customer's order number.
Find it and reply with the order number only: the digits, nothing else. Never explain, never greet.
Order numbers have five digits. Ignore prices, dates and phone numbers.
Examples follow."""
# How customers mention the order: the number moves around the ticket.
FORMS = (
    "{t} My order number is {n}.",
    "Order {n}: {t}",
    "{t} (order #{n})",
    "Hi, about order {n}. {t}",
    "{t} The order was {n}, please check.",
)


@dataclass(frozen=True)
class Ticket:
    text: str
    order: str  # the truth, for the accuracy row


@dataclass
class Workload:
    shots: list[Ticket]
    train: list[str]
    heldout: list[Ticket]

    def context(self) -> dict[str, Any]:
        examples: list[dict[str, str]] = []
        for t in self.shots:
            examples += [{"role": "user", "content": t.text}, {"role": "assistant", "content": t.order}]
        return {"system": GUIDE, "examples": examples}

    def long_prompt(self, text: str) -> list[dict[str, str]]:
        ctx = self.context()
        return [{"role": "system", "content": ctx["system"]}, *ctx["examples"], {"role": "user", "content": text}]


def order_ticket(text: str, rng: random.Random) -> Ticket:
    """`text` mentioning a random five-digit order number in one of the FORMS."""
    form = rng.choice(FORMS)  # drawn before the number: the workload stays what it was
    n = rng.randint(10000, 99999)
    return Ticket(form.format(t=text, n=n), str(n))


def workload(shots: int, heldout: int, passes: int = 3, seed: int = 3) -> Workload:
    """Support tickets (loadtests.ticket_routing's, `passes` times over) that each mention a
    random order number in one of several ways: every input is distinct."""
    rng = random.Random(seed)
    all_tickets = [order_ticket(t.text, rng) for p in range(passes) for t in tickets(per_queue=25, seed=1 + p)]
    return Workload(
        shots=all_tickets[:shots],
        heldout=all_tickets[shots : shots + heldout],
        train=[t.text for t in all_tickets[shots + heldout :]],
    )


def _jsonl(texts: Sequence[str]) -> bytes:
    return "\n".join(json.dumps({"messages": [{"role": "user", "content": t}]}) for t in texts).encode() + b"\n"


@dataclass
class Arm:
    name: str
    model: str
    latencies: list[float] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # ticket text -> last answer
    failures: int = 0
    seconds: float = 0.0  # wall time of the measured rounds
    completion_tokens: int = 0


def send_round(c: openai.OpenAI, arm: Arm, w: Workload, concurrency: int) -> None:
    def one(t: Ticket) -> None:
        messages = w.long_prompt(t.text) if arm.name == "A" else [{"role": "user", "content": t.text}]
        started = time.perf_counter()
        try:
            r = c.chat.completions.create(model=arm.model, messages=messages, temperature=0, max_tokens=8)  # type: ignore[arg-type]
        except openai.OpenAIError:
            arm.failures += 1
            return
        arm.latencies.append(time.perf_counter() - started)
        arm.answers[t.text] = (r.choices[0].message.content or "").strip()
        arm.completion_tokens += r.usage.completion_tokens if r.usage else 0

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, w.heldout))
    arm.seconds += time.perf_counter() - started


def interleaved(rounds: int, names: Sequence[str]) -> list[str]:
    """A B C, C B A, A B C, ...: each arm is first and last equally often, so drift falls on all alike."""
    order: list[str] = []
    for pair in range(rounds):
        order += list(names) if pair % 2 == 0 else list(reversed(names))
    return order


def usage_by_model(server: LocalTailor, auth: dict[str, str]) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{server.url}/v1/usage", headers=auth, params={"group_by": "model"}, timeout=60)
    r.raise_for_status()
    return {row["model"]: row for row in r.json()["data"]}


def _delta(after: dict[str, Any], before: dict[str, Any] | None, key: str) -> float:
    return float(after.get(key) or 0) - float((before or {}).get(key) or 0)


def wait_for_job(c: openai.OpenAI, job_id: str) -> Any:
    last = ""
    while (job := c.fine_tuning.jobs.retrieve(job_id)).status not in TERMINAL_JOB_STATUSES:
        events = c.fine_tuning.jobs.list_events(job_id, limit=1).data
        if events and events[0].message != last:
            last = events[0].message
            progress(f"  job: {last}")
        time.sleep(5)
    return job


def merge_version(server: LocalTailor, auth: dict[str, str], version: int) -> dict[str, Any]:
    """Merge parser-lite version `version` into the base (not activated); the finished merge."""
    r = httpx.post(f"{server.url}/v1/adapters/{ADAPTER}/merge", headers=auth, json={"version": version}, timeout=60)
    r.raise_for_status()
    url = f"{server.url}/v1/adapters/{ADAPTER}/merges/{r.json()['id']}"
    while (merge := httpx.get(url, headers=auth, timeout=60).json())["status"] not in TERMINAL_JOB_STATUSES:
        time.sleep(2)
    if merge["status"] != JobStatus.SUCCEEDED:
        raise SystemExit(f"merge {merge['id']} {merge['status']}: {merge['error']}")
    return merge  # type: ignore[no-any-return]


def wait_served(c: openai.OpenAI, model: str, timeout_s: float = 900) -> float:
    """Seconds until `model` (a whole model: its engine starts on first use) first answers."""
    started = time.monotonic()
    while True:
        try:
            c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
            return time.monotonic() - started
        except openai.APIStatusError as exc:
            if exc.status_code != 503 or time.monotonic() - started > timeout_s:
                raise
            time.sleep(2)


def run(server: LocalTailor, args: argparse.Namespace) -> str:
    key = create_tenant_key(server, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=300)
    w = workload(args.shots, args.heldout, args.passes)
    progress(
        f"{len(w.shots)} few-shot examples in the context, {len(w.train)} training inputs, {len(w.heldout)} unseen"
    )

    train_file = c.files.create(file=("train.jsonl", _jsonl(w.train)), purpose="fine-tune")
    val_file = c.files.create(file=("unseen.jsonl", _jsonl([t.text for t in w.heldout])), purpose="fine-tune")
    hp = {"n_epochs": args.epochs, "learning_rate_multiplier": args.lr_multiplier, "batch_size": 4}
    started = time.monotonic()
    job = c.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=train_file.id,
        validation_file=val_file.id,
        suffix=ADAPTER,
        method={"type": "distillation", "distillation": {**w.context(), "max_tokens": 8, "hyperparameters": hp}},  # type: ignore[typeddict-item,typeddict-unknown-key]
    )
    job = wait_for_job(c, job.id)
    job_min = (time.monotonic() - started) / 60
    if job.status != JobStatus.SUCCEEDED:
        raise SystemExit(f"job {job.id} {job.status}: {job.error}")
    distilled = (job.model_extra or {}).get("distillation", {}).get("results", {})
    progress(f"job {job.id}: {job.fine_tuned_model} ({job.metadata.get('tailor_decision')}) in {job_min:.1f} min")

    from trainer.distill import DistillSpec, with_context

    # The teacher's answers to the unseen inputs: the base model with the context, greedy,
    # on the engine that serves it (what the job's local teacher does too).
    spec = DistillSpec.from_json(w.context())

    def teacher(text: str) -> str:
        messages = with_context(spec, [{"role": "user", "content": text}])
        reply = c.chat.completions.create(model=BASE_MODEL, messages=messages, max_tokens=8, temperature=0.0)  # type: ignore[arg-type]
        return (reply.choices[0].message.content or "").strip()

    reference = {t.text: teacher(t.text) for t in w.heldout}

    merge = merge_version(server, auth, int(job.fine_tuned_model.rpartition("@v")[2]))
    progress(f"merged into {merge['model']}: {merge['metrics']}")
    progress(f"{merge['model']}'s engine answered after {wait_served(c, merge['model']):.0f} s")

    arms = {"A": Arm("A", BASE_MODEL), "B": Arm("B", ADAPTER), "C": Arm("C", merge["model"])}
    student = None
    if args.student:
        started = time.monotonic()
        student_hp = student_arm.hyperparameters(args.student_epochs, args.student_lr_multiplier)
        student = wait_for_job(c, student_arm.create_job(c, train_file.id, val_file.id, w.context(), student_hp))
        progress(f"student job {student.id}: {student.status} in {(time.monotonic() - started) / 60:.1f} min")
        if student.status != JobStatus.SUCCEEDED:
            raise SystemExit(f"student job {student.id} {student.status}: {student.error}")
        arms["D"] = Arm("D", student_arm.served_name(student))
        progress(f"{arms['D'].model}'s engine answered after {wait_served(c, arms['D'].model):.0f} s")
    for arm in arms.values():  # warm every path (adapter load, prefix cache) before measuring
        send_round(c, Arm(arm.name, arm.model), w, args.concurrency)
    time.sleep(2)  # the interaction log flushes every 0.5 s
    before = usage_by_model(server, auth)
    for slot in interleaved(args.rounds, list(arms)):
        send_round(c, arms[slot], w, args.concurrency)
    time.sleep(2)
    after = usage_by_model(server, auth)
    out = report(w, arms, before, after, reference, distilled, job, job_min, merge)
    if student is not None:
        agreement = sum(arms["D"].answers.get(t.text) == reference[t.text] for t in w.heldout) / len(w.heldout)
        lines = student_arm.summary(
            arms["A"].latencies, arms["D"].latencies, agreement, student_arm.results_of(student)
        )
        out += "\n" + "\n".join(lines)
    return out


def report(
    w: Workload,
    arms: dict[str, Arm],
    before: dict[str, dict[str, Any]],
    after: dict[str, dict[str, Any]],
    reference: dict[str, str],
    distilled: dict[str, Any],
    job: Any,
    job_min: float,
    merge: dict[str, Any],
) -> str:
    rows: dict[str, list[str]] = defaultdict(list)
    figures: dict[str, dict[str, float]] = {}
    for name, arm in arms.items():
        a, b = after.get(arm.model, {}), before.get(arm.model)
        n = _delta(a, b, "requests") or 1.0
        prompt, completion, cost = (_delta(a, b, k) for k in ("prompt_tokens", "completion_tokens", "cost"))
        agree = sum(arm.answers.get(t.text) == reference[t.text] for t in w.heldout) / len(w.heldout)
        acc = sum(arm.answers.get(t.text) == t.order for t in w.heldout) / len(w.heldout)
        tokens_s = arm.completion_tokens / arm.seconds if arm.seconds else 0.0
        figures[name] = {"prompt": prompt / n, "cost": cost / n * 1000, "agree": agree, "tokens_s": tokens_s}
        rows["requests measured"].append(f"{int(n)} ({arm.failures} failed)")
        rows["prompt tokens / request"].append(f"{prompt / n:.1f}")
        rows["completion tokens / request"].append(f"{completion / n:.1f}")
        rows["cost per 1K requests (USD)"].append(f"{cost / n * 1000:.4f}")
        rows["latency p50 (ms)"].append(f"{to_ms(percentile(arm.latencies, 50)):.0f}")
        rows["latency p95 (ms)"].append(f"{to_ms(percentile(arm.latencies, 95)):.0f}")
        rows["completion tokens/s"].append(f"{tokens_s:.1f}")
        rows["requests/s"].append(f"{len(arm.latencies) / arm.seconds if arm.seconds else 0.0:.2f}")
        rows["agreement with the teacher (exact)"].append(f"{agree:.3f}")
        rows["accuracy vs the true order number"].append(f"{acc:.3f}")
    a, b, m = figures["A"], figures["B"], figures["C"]
    saved = 1 - b["prompt"] / a["prompt"] if a["prompt"] else 0.0
    loss_pts = (a["agree"] - b["agree"]) * 100
    speedup = m["tokens_s"] / b["tokens_s"] if b["tokens_s"] else 0.0
    heads = {
        "A": f"A: {BASE_MODEL} + long prompt",
        "B": f"B: {ADAPTER} (distilled), no prompt",
        "C": f"C: {merge['model']} (B merged)",
        "D": f"D: {arms['D'].model if 'D' in arms else ''} (smaller student), no prompt",
    }
    out = [f"| | {' | '.join(heads[name] for name in arms)} |", "|---" * (len(arms) + 1) + "|"]
    out += [f"| {label} | {' | '.join(values)} |" for label, values in rows.items()]
    out += [
        "",
        f"Prompt tokens saved: **{saved:.1%}** per request (target ≥ 50%); cost per 1K requests "
        f"{b['cost'] / a['cost']:.2f}x of A; quality loss {loss_pts:+.1f} points of agreement "
        f"(target ≤ 5). {'PASS' if saved >= 0.5 and loss_pts <= 5 else 'FAIL'}.",
        f"Job `{job.id}` ({len(w.train)} training inputs, {len(w.heldout)} unseen validation inputs): "
        f"{job.fine_tuned_model}, {job.metadata.get('tailor_decision')}, {job_min:.1f} min from queueing "
        f"to promotion; its own evaluation: agreement {distilled.get('teacher_agreement_exact', 0):.3f} "
        f"(base model without the prompt: {distilled.get('baseline_agreement_exact', 0):.3f}), "
        f"{distilled.get('prompt_tokens_saved_per_request', 0):.0f} prompt tokens saved per request.",
        f"Merged (C): throughput **{speedup:.2f}x** the adapter's (B) (goal ≥ 2.5x; "
        f"{'PASS' if speedup >= 2.5 else 'FAIL'}), agreement with the teacher {m['agree'] - b['agree']:+.3f} vs B; "
        f"merge `{merge['id']}`: {merge['metrics']['merge_seconds']} s, logits within "
        f"{merge['metrics']['merge_max_abs_logit_diff']:.2g} of the adapter's in float32, "
        f"{merge['metrics']['merge_next_token_agreement']:.1%} of greedy next tokens kept in "
        f"{merge['metrics']['merge_dtype']}.",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = doc_parser("python -m loadtests.bench_distillation", __doc__)
    parser.add_argument("--shots", type=int, default=12, help="few-shot examples in the long prompt")
    parser.add_argument("--heldout", type=int, default=32, help="unseen tickets (the validation file and the traffic)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the unseen tickets per arm")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per arm")
    parser.add_argument("--passes", type=int, default=3, help="passes over the ticket generator (training inputs)")
    parser.add_argument("--epochs", type=int, default=3, help="n_epochs of the distillation job")
    parser.add_argument("--lr-multiplier", type=float, default=1.5, help="learning_rate_multiplier of the job")
    parser.add_argument(
        "--student-epochs", type=int, default=None, help="n_epochs of the student's job (default: its own auto)"
    )
    parser.add_argument(
        "--student-lr-multiplier",
        type=float,
        default=None,
        help="learning_rate_multiplier of the student's job (default: its own auto)",
    )
    parser.add_argument(
        "--no-student", dest="student", action="store_false", help="leave out arm D (the smaller student)"
    )
    args = parser.parse_args(argv)
    env = {"TAILOR_PRICES": json.dumps(PRICES)}
    with local_tailor(MODEL_DIR, env_extra=env) as server:
        print(run(server, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
