"""loadtests.bench_batch_priority's wiring, against a fake Tailor (httpx.MockTransport): the batch
file it uploads is one Tailor accepts, rounds go ABAB, a B round runs the interactive clients
while its batch runs and cancels it after, and the report's figures and table."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest

from gateway.batches.input_file import parse
from loadtests.bench_batch_priority import cli, report, rounds, workload
from loadtests.prompts import PROMPTS

CFG = replace(workload.QUICK, alone_s=0.05)


@dataclass
class FakeTailor:
    """Answers chat completions after `latency_s`; a batch answers a line per poll until cancelled."""

    latency_s: float = 0.01
    calls: list[str] = field(default_factory=list)
    uploaded: list[bytes] = field(default_factory=list)
    answered: dict[str, int] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    chats_during_batch: int = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.calls.append(f"{method} {path}")
        assert request.headers["authorization"] == "Bearer tk-bench"
        if path == "/v1/chat/completions":
            body = json.loads(request.content)
            assert body["ignore_eos"] is True and body["max_tokens"] == CFG.max_tokens
            if any(s == "in_progress" for s in self.status.values()):
                self.chats_during_batch += 1
            await asyncio.sleep(self.latency_s)
            return httpx.Response(200, json={"choices": []})
        if path == "/v1/files":
            self.uploaded.append(_file_part(request))
            return httpx.Response(200, json={"id": f"file-{len(self.uploaded)}"})
        if path == "/v1/batches":
            batch_id = f"batch_{len(self.status) + 1}"
            self.status[batch_id], self.answered[batch_id] = "in_progress", 0
            return httpx.Response(200, json={"id": batch_id, "status": "validating"})
        batch_id = path.split("/")[3]
        if path.endswith("/cancel"):
            self.status[batch_id] = "cancelled"
        elif self.status[batch_id] == "in_progress":
            self.answered[batch_id] += 1
        counts = {"total": CFG.batch_lines, "completed": self.answered[batch_id], "failed": 0}
        return httpx.Response(200, json={"id": batch_id, "status": self.status[batch_id], "request_counts": counts})


def _file_part(request: httpx.Request) -> bytes:
    content = request.read()
    start = content.index(b"\r\n\r\n", content.index(b'filename="bench.jsonl"')) + 4
    return content[start : content.index(b"\r\n--", start)]


async def run_against(fake: FakeTailor, cfg: workload.BenchConfig = CFG) -> list[rounds.RoundResult]:
    transport = httpx.MockTransport(fake)
    headers = {"authorization": "Bearer tk-bench"}
    async with httpx.AsyncClient(transport=transport, base_url="http://tailor.test", headers=headers) as client:
        return await rounds.run_rounds(client, "m", cfg)


async def test_rounds_go_abab_and_b_rounds_run_beside_a_batch_they_cancel() -> None:
    fake = FakeTailor()
    results = await run_against(fake, replace(CFG, rounds=2))
    assert [(r.kind, r.slot) for r in results] == [("A", 1), ("B", 2), ("A", 3), ("B", 4)]
    per_round = CFG.clients * CFG.requests
    assert all(len(r.latencies_s) == per_round and r.errors == 0 for r in results)
    # Every B round's interactive requests ran while its batch was in progress, and it was cancelled after.
    assert fake.chats_during_batch == 2 * per_round
    assert fake.status == {"batch_1": "cancelled", "batch_2": "cancelled"}
    assert fake.calls.count("POST /v1/batches/batch_1/cancel") == 1
    b = results[1]
    assert b.batch_alone_lines >= 1 and b.batch_alone_s >= CFG.alone_s and b.batch_lines >= 0

    # The file it uploads is a batch input file Tailor takes as it is.
    lines = parse(fake.uploaded[0], max_lines=CFG.batch_lines)
    assert len(lines) == CFG.batch_lines and {line.url for line in lines} == {workload.CHAT_PATH}
    assert lines[0].body == workload.chat_body("m", PROMPTS[0], CFG)


async def test_a_batch_that_ends_before_the_round_is_an_error() -> None:
    fake = FakeTailor()
    original = fake.__call__

    async def ends_early(request: httpx.Request) -> httpx.Response:
        resp = await original(request)
        if request.method == "GET" and fake.answered.get("batch_1", 0) >= 2:
            fake.status["batch_1"] = "completed"  # the next look finds it ended
        if request.url.path.endswith("/cancel") and fake.answered["batch_1"] >= 2:
            return httpx.Response(400, json={"error": {"code": "batch_not_cancellable"}})  # as Tailor
        return resp

    transport = httpx.MockTransport(ends_early)
    headers = {"authorization": "Bearer tk-bench"}
    async with httpx.AsyncClient(transport=transport, base_url="http://tailor.test", headers=headers) as client:
        with pytest.raises(RuntimeError, match="raise --batch-lines"):
            await rounds.run_round(client, "m", CFG, "B", 1)


def result(kind: str, latencies_ms: list[float], **batch: Any) -> rounds.RoundResult:
    return rounds.RoundResult(kind, 1, [ms / 1000 for ms in latencies_ms], 0, 10.0, **batch)


def test_report_figures_and_table() -> None:
    rounds_ = [
        result("A", [100.0 + i for i in range(20)]),
        result("B", [110.0 + i for i in range(20)], batch_alone_lines=10, batch_alone_s=5.0, batch_lines=4),
    ]
    rep = report.build_report(CFG, "m", rounds_, (0.1, 0.1, 0.1), (0.2, 0.2, 0.2), 0, cpus=2)
    assert rep.without.p95_ms == pytest.approx(118.05) and rep.with_batch.p95_ms == pytest.approx(128.05)
    assert rep.p95_ratio == pytest.approx(128.05 / 118.05) and rep.meets_target
    assert (rep.batch_lines_per_s_alone, rep.batch_lines_per_s_beside) == (2.0, 0.4)
    assert rep.warnings == []
    table = report.render(rep)
    assert "| p95 latency ms" in table and "<= 1.2 PASS" in table and "2.00 / 0.40" in table

    slow = [result("A", [100.0] * 20), result("B", [100.0] * 18 + [300.0, 300.0])]
    busy = report.build_report(CFG, "m", slow, (5.0, 4.0, 3.0), (5.0, 4.0, 3.0), 1, cpus=2)
    assert not busy.meets_target and "FAIL" in report.render(busy)
    assert len(busy.warnings) == 2 and "busy" in busy.warnings[0]


def test_command_line() -> None:
    assert cli.config_from(cli.parse_args([])) == workload.BenchConfig()
    quick = cli.config_from(cli.parse_args(["--quick", "--requests", "5"]))
    assert quick == replace(workload.QUICK, requests=5)
    assert cli.gateway_env(None) == {"TAILOR_RUN_TRAINER": "false", "TAILOR_BATCH_POLL_S": "0.2"}
    assert cli.gateway_env(4)["TAILOR_BATCH_CONCURRENCY_BUSY"] == "4"
    for argv in (["--gateway-url", "http://x"], ["--gateway-url", "http://x", "--api-key", "k", "--busy", "2"]):
        with pytest.raises(SystemExit):
            cli.parse_args(argv)
