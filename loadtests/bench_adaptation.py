"""The adaptation loop end to end, with figures: accuracy before and after, training time.

    python -m loadtests.bench_adaptation [--traffic-per-queue 15] [--test-per-queue 10]

Starts its own Tailor (child vLLM engine + trainer worker), creates a tenant whose adapter
name `router` starts as an untrained LoRA (base-model behaviour), sends ticket-routing
traffic through it, corrects every answer through the feedback API, queues a training job
from that feedback, waits for evaluation and promotion, and measures the routing accuracy
on tickets that were never part of the traffic, before and after, through the same name.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import httpx
import openai

from core.states import TERMINAL_JOB_STATUSES, JobStatus
from loadtests.admin_api import create_tenant_key
from loadtests.bench_cli import doc_parser
from loadtests.launcher import MODEL_DIR, progress
from loadtests.local_server import LocalTailor, local_tailor
from loadtests.ticket_routing import Ticket, accuracy, tickets


def identity_adapter(out: Path) -> bytes:
    """A LoRA with zero B matrices (peft's default init), as a .tar.gz upload."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets)).save_pretrained(out)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(out, arcname="adapter")
    return buf.getvalue()


def split(per_queue_traffic: int, per_queue_test: int) -> tuple[list[Ticket], list[Ticket]]:
    by_queue: dict[str, list[Ticket]] = defaultdict(list)
    for t in tickets(per_queue=per_queue_traffic + per_queue_test, seed=1):
        by_queue[t.queue].append(t)
    traffic = [t for q in by_queue.values() for t in q[:per_queue_traffic]]
    test = [t for q in by_queue.values() for t in q[per_queue_traffic:]]
    return traffic, test


def answers(c: openai.OpenAI, items: list[Ticket]) -> tuple[list[str], list[str]]:
    texts, ids = [], []
    for t in items:
        r = c.chat.completions.create(model="router", messages=t.messages(), temperature=0, max_tokens=8)
        texts.append(r.choices[0].message.content or "")
        ids.append(r.id)
    return texts, ids


def run(server: LocalTailor, args: argparse.Namespace) -> str:
    key = create_tenant_key(server, "demo")
    auth = {"Authorization": f"Bearer {key}"}
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)
    httpx.put(f"{server.url}/v1/policy", headers=auth, json={"auto_promote": True}).raise_for_status()
    with tempfile.TemporaryDirectory() as tmp:
        archive = identity_adapter(Path(tmp) / "identity")
    httpx.post(
        f"{server.url}/v1/adapters",
        headers=auth,
        data={"name": "router"},
        files={"file": ("router.tar.gz", archive)},
        timeout=120,
    ).raise_for_status()

    traffic, test = split(args.traffic_per_queue, args.test_per_queue)
    progress(f"{len(traffic)} tickets of traffic, {len(test)} unseen test tickets")
    before_test, _ = answers(c, test)
    served, ids = answers(c, traffic)
    for t, interaction_id, answer in zip(traffic, ids, served, strict=True):
        body = (
            {"interaction_id": interaction_id, "rating": "good"}
            if answer.strip() == t.queue
            else {"interaction_id": interaction_id, "correction": t.queue}
        )
        httpx.post(f"{server.url}/v1/feedback", headers=auth, json=body).raise_for_status()

    admin = {"Authorization": f"Bearer {server.admin_key}"}
    r = httpx.post(
        f"{server.url}/admin/tenants/demo/train",
        headers=admin,
        timeout=120,
        json={
            "adapter_name": "router",
            "method": "supervised",
            "hyperparameters": {"learning_rate_multiplier": args.lr_multiplier},
        },
    )
    r.raise_for_status()
    job_id = r.json()["id"]
    started = time.monotonic()
    while (job := c.fine_tuning.jobs.retrieve(job_id)).status not in TERMINAL_JOB_STATUSES:
        time.sleep(5)
    wall_min = (time.monotonic() - started) / 60
    if job.status != JobStatus.SUCCEEDED:
        raise SystemExit(f"job {job_id} {job.status}: {job.error}")
    evaluation = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}/evaluation", headers=auth).json()
    time.sleep(3)  # lookup caches
    after_test, _ = answers(c, test)

    cand, base = evaluation["candidate"], evaluation["baseline"]
    rows = [
        (
            "routing accuracy, unseen tickets (model='router')",
            f"{accuracy(before_test, test):.2f}",
            f"{accuracy(after_test, test):.2f}",
        ),
        ("held-out exact match (job evaluation)", f"{base['exact_match']:.2f}", f"{cand['exact_match']:.2f}"),
        ("held-out token F1", f"{base['token_f1']:.2f}", f"{cand['token_f1']:.2f}"),
        ("held-out perplexity of the reference", f"{base['perplexity']:.1f}", f"{cand['perplexity']:.2f}"),
    ]
    out = ["| metric | before (v1, untrained) | after (promoted v2) |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c_} |" for a, b, c_ in rows]
    out.append("")
    out.append(
        f"Traffic: {len(traffic)} tickets, all corrected through `POST /v1/feedback`; "
        f"test: {len(test)} tickets never sent before. Job `{job_id}`: decision "
        f"**{evaluation['decision']}**, {job.trained_tokens or 0} trained tokens, "
        f"{wall_min:.1f} min from queueing to promotion (training, evaluation, registration)."
    )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = doc_parser("python -m loadtests.bench_adaptation", __doc__)
    parser.add_argument("--traffic-per-queue", type=int, default=15, help="tickets per queue sent and corrected")
    parser.add_argument("--test-per-queue", type=int, default=10, help="unseen tickets per queue to measure")
    parser.add_argument("--lr-multiplier", type=float, default=5.0, help="learning_rate_multiplier of the job")
    args = parser.parse_args(argv)
    with local_tailor(MODEL_DIR) as server:
        print(run(server, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
