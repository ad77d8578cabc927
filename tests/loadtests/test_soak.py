"""Unit tests for the soak test's pure parts (`loadtests/soak/`, `loadtests/procfs.py`): no server, no real /proc.

/proc is faked as a directory tree in tmp_path (status, stat, cmdline, fd/, net/tcp), the
samples are built by hand, and the traffic mix runs on a seeded RNG.
"""

from __future__ import annotations

import asyncio
import csv
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest

from loadtests import procfs
from loadtests.procfs import ProcFS
from loadtests.soak import cli, report, traffic
from loadtests.soak import samples as soak_samples
from loadtests.soak.samples import Counts, ProcessSummary, Sample

STATUS = """Name:\tpython
State:\tS (sleeping)
VmPeak:\t  300000 kB
VmRSS:\t  204800 kB
RssAnon:\t  150000 kB
Threads:\t12
"""

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0
   1: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 5555 1 0
   2: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7777 1 0
"""


def fake_proc(root: Path, pid: int, ppid: int, cmdline: str, *, rss_kib: int = 1024, fds: int = 3) -> Path:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "status").write_text(f"Name:\tx\nVmRSS:\t{rss_kib} kB\nThreads:\t4\n")
    (d / "stat").write_text(f"{pid} (some (odd) name) S {ppid} 1 1 0 -1\n")
    (d / "cmdline").write_bytes(cmdline.replace(" ", "\0").encode() + b"\0")
    for i in range(fds):
        (d / "fd" / str(i)).write_text("")
    return d


def sample(t: float, process: str, rss: float, fds: int, *, pid: int = 10, done: int = 0) -> Sample:
    return Sample(t, process, pid, rss, fds, 8, done, 0, 0)


def summary(**over: object) -> ProcessSummary:
    base: dict[str, object] = {
        "process": "gateway",
        "pids": (10,),
        "rss_start": 200.0,
        "rss_end": 201.0,
        "rss_max": 202.0,
        "rss_slope": 1.0,
        "rss_growth": 0.1,
        "fds_start": 20,
        "fds_warm": 30,
        "fds_end": 31,
        "fds_max": 33,
        "threads_start": 8,
        "threads_end": 8,
        "at_end": True,
    }
    return ProcessSummary(**{**base, **over})  # type: ignore[arg-type]


# --- /proc parsing -------------------------------------------------------------------------------


def test_parse_status_reads_rss_and_threads() -> None:
    assert procfs.parse_status(STATUS) == (204800, 12)
    assert procfs.parse_status("Name:\tkthreadd\nThreads:\t1\n") == (0, 1)  # kernel thread: no VmRSS


def test_parse_ppid_survives_parentheses_and_spaces_in_the_name() -> None:
    assert procfs.parse_ppid("123 (weird ) name) S 45 1 1") == 45


def test_listen_inodes_keeps_listening_sockets_on_the_port() -> None:
    assert procfs.listen_inodes(TCP, 8000) == {4242}  # 0x1F40; the established one (01) is not listening
    assert procfs.listen_inodes(TCP, 8001) == {7777}
    assert procfs.listen_inodes(TCP, 9) == set()


def test_procfs_reads_a_fake_process(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, 1, "python -m gateway.cli serve", rss_kib=2048, fds=5)
    fs = ProcFS(tmp_path)
    assert fs.stats(10) == procfs.ProcStats(rss_mib=2.0, fds=5, threads=4)
    assert fs.stats(99) is None  # gone
    assert fs.name(10) == "python -m gateway.cli serve"
    assert fs.parents() == {10: 1}


def test_procfs_name_falls_back_to_comm(tmp_path: Path) -> None:
    d = fake_proc(tmp_path, 10, 1, "")
    (d / "cmdline").write_bytes(b"")
    (d / "comm").write_text("kworker\n")
    assert ProcFS(tmp_path).name(10) == "kworker"


def test_procfs_finds_the_pid_listening_on_a_port(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(TCP)
    fake_proc(tmp_path, 10, 1, "python -m gateway.cli serve", fds=0)
    fake_proc(tmp_path, 11, 1, "other", fds=0)
    (tmp_path / "10" / "fd" / "7").symlink_to("socket:[4242]")
    (tmp_path / "11" / "fd" / "7").symlink_to("socket:[7777]")
    fs = ProcFS(tmp_path)
    assert fs.listening_pid(8000) == 10
    assert fs.listening_pid(8001) == 11
    assert fs.listening_pid(9) is None


# --- labelling the process tree --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/x/python -m vllm.entrypoints.openai.api_server --model m", "engine"),
        ("/x/python -m trainer.worker", "trainer"),
        ("/x/python -m gateway.cli serve", "gateway"),
        ("VLLM::EngineCore", "VLLM::EngineCore"),
        ("/x/python -c from multiprocessing.resource_tracker import main;main(7)", "resource_tracker"),
        ("/usr/bin/something --flag", "something"),
        ("", "?"),
    ],
)
def test_role(name: str, expected: str) -> None:
    assert procfs.role(name) == expected


def test_label_tree_labels_children_and_grandchildren() -> None:
    parents = {10: 1, 20: 10, 21: 20, 22: 20, 23: 20, 30: 10, 99: 1}
    names = {
        20: "python -m vllm.entrypoints.openai.api_server",
        21: "VLLM::EngineCore",
        22: "python -c from multiprocessing.resource_tracker import main",
        23: "VLLM::EngineCore",
        30: "python -m trainer.worker",
    }
    labels = procfs.label_tree(10, parents, lambda pid: names[pid])
    assert labels == {
        "gateway": 10,
        "engine": 20,
        "trainer": 30,
        "engine/VLLM::EngineCore": 21,
        "engine/resource_tracker": 22,
        "engine/VLLM::EngineCore#2": 23,
    }


def test_take_sample_reads_the_tree_and_the_counters(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, 1, "python -m gateway.cli serve", rss_kib=10240, fds=4)
    fake_proc(tmp_path, 20, 10, "python -m vllm.entrypoints.openai.api_server", rss_kib=20480, fds=6)
    fake_proc(tmp_path, 30, 1, "unrelated")
    counts = Counts(done=7, failed=1, expected_errors=2)
    rows = soak_samples.take_sample(ProcFS(tmp_path), 10, 12.34, counts)
    assert rows == [Sample(12.3, "gateway", 10, 10.0, 4, 4, 7, 1, 2), Sample(12.3, "engine", 20, 20.0, 6, 4, 7, 1, 2)]


# --- slope, summary, verdict -------------------------------------------------------------------


def test_slope_per_hour_is_exact_on_a_line() -> None:
    points = [(t, 100 + t / 60) for t in (0.0, 60.0, 120.0, 180.0)]  # 1 MiB a minute
    assert soak_samples.slope_per_hour(points) == pytest.approx(60.0)
    assert soak_samples.slope_per_hour([(0.0, 5.0), (10.0, 5.0), (20.0, 5.0)]) == 0.0


def test_slope_per_hour_needs_three_distinct_times() -> None:
    assert soak_samples.slope_per_hour([(0.0, 1.0), (10.0, 2.0)]) is None
    assert soak_samples.slope_per_hour([(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)]) is None


def test_summarize_uses_the_second_half_after_warm_up() -> None:
    # Fast growth while warming up (0-40 s), then flat: the slope sees only the flat part.
    rss = [100, 120, 140, 150, 160, 160, 160, 160, 160]
    fds = [10, 15, 20, 25, 30, 30, 31, 30, 30]
    samples = [sample(t * 10.0, "gateway", r, f) for t, (r, f) in enumerate(zip(rss, fds, strict=True))]
    (s,) = soak_samples.summarize(samples)
    assert (s.rss_start, s.rss_end, s.rss_max) == (100, 160, 160)
    assert s.rss_slope == pytest.approx(0.0)
    assert s.rss_growth == pytest.approx(0.0)
    assert (s.fds_start, s.fds_warm, s.fds_end, s.fds_max) == (10, 30, 30, 31)  # warm: t=40, half of 80
    assert s.pids == (10,) and s.at_end
    assert soak_samples.process_problems(s) == []


def test_summarize_tracks_restarts_and_late_or_missing_processes() -> None:
    samples = [sample(t, "engine", 1000, 50, pid=20 if t < 30 else 21) for t in (0.0, 10.0, 20.0, 30.0, 40.0)]
    samples += [sample(t, "trainer", 300, 9, pid=30) for t in (0.0, 10.0, 20.0, 30.0)]  # gone at 40
    samples += [sample(t, "gateway/python", 10, 3, pid=40) for t in (30.0, 40.0)]  # after warm-up (20)
    samples += [sample(10.0, "gateway/ps", 1, 1, pid=50)]  # came and went
    by = {s.process: s for s in soak_samples.summarize(samples)}
    assert by["engine"].pids == (20, 21)
    assert soak_samples.process_problems(by["engine"]) == ["engine: restarted (pids 20, 21)"]
    assert not by["trainer"].at_end
    assert soak_samples.process_problems(by["trainer"])[0] == "trainer: gone before the end"
    assert soak_samples.process_problems(by["gateway/python"]) == ["gateway/python: appeared after warm-up"]
    assert soak_samples.process_problems(by["gateway/ps"]) == []


def test_problems_fd_drift_beyond_tolerance() -> None:
    assert soak_samples.process_problems(summary(fds_warm=30, fds_end=35)) == []
    assert soak_samples.process_problems(summary(fds_warm=30, fds_end=25)) == []
    (p,) = soak_samples.process_problems(summary(fds_warm=30, fds_end=36))
    assert "36 FDs at the end, 30 after warm-up" in p


def test_problems_rss_slope_needs_both_the_limit_and_the_noise_floor() -> None:
    # A steep slope from a couple of MiB of wobble in a short window is not a leak ...
    assert soak_samples.process_problems(summary(rss_slope=120.0, rss_growth=3.0)) == []
    # ... a slope under the limit is fine whatever it adds ...
    assert soak_samples.process_problems(summary(rss_slope=40.0, rss_growth=20.0)) == []
    # ... both over: a leak.
    (p,) = soak_samples.process_problems(summary(rss_slope=120.0, rss_growth=8.0))
    assert "RSS grows 120 MiB/h (limit 50)" in p
    # The engine has more room.
    assert (
        soak_samples.process_problems(summary(process="engine/VLLM::EngineCore", rss_slope=90.0, rss_growth=10.0)) == []
    )
    assert soak_samples.process_problems(summary(process="engine", rss_slope=150.0, rss_growth=20.0))


def test_problems_without_enough_samples_cannot_pass() -> None:
    (p,) = soak_samples.process_problems(summary(rss_slope=None, rss_growth=None))
    assert "no RSS slope" in p


def test_limits_for_engine_processes_only() -> None:
    assert soak_samples.limits_for("engine") is soak_samples.ENGINE_LIMITS
    assert soak_samples.limits_for("engine/VLLM::EngineCore") is soak_samples.ENGINE_LIMITS
    assert soak_samples.limits_for("gateway") is soak_samples.PYTHON_LIMITS
    assert soak_samples.limits_for("trainer") is soak_samples.PYTHON_LIMITS


def test_verdict_counts_failures_and_missing_gateway() -> None:
    ok = Counts(done=10)
    assert soak_samples.verdict([summary()], ok) == []
    bad = Counts(done=10, failed=2, failures=["chat base: HTTP 500 (expected 200)", "x"])
    assert soak_samples.verdict([summary()], bad) == [
        "2 requests failed (first: chat base: HTTP 500 (expected 200); x)"
    ]
    assert "the gateway process could not be read" in soak_samples.verdict([summary(process="engine")], ok)
    assert "no request was served" in soak_samples.verdict([summary()], Counts())


# --- output --------------------------------------------------------------------------------------


def test_render_has_a_row_per_process_and_the_verdict() -> None:
    counts = Counts(done=42, expected_errors=3, by_kind=Counter({"chat": 20, "feedback": 22, "bad_model": 3}))
    text = report.render(
        [summary(), summary(process="engine", rss_slope=None, rss_growth=None)], counts, [], {"a": "b"}
    )
    lines = text.splitlines()
    assert lines[0].startswith("| process | RSS MiB start / end / max |")
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---|"
    assert lines[2] == "| gateway | 200 / 201 / 202 | 1.0 (+0.1 MiB) | < 50 | 20 / 30 / 31 / 33 | 8 / 8 | PASS |"
    assert lines[3].startswith("| engine | 200 / 201 / 202 | n/a | < 100 |") and lines[3].endswith("FAIL |")
    assert "- requests served: 42 (chat 20, feedback 22)" in lines
    assert "- expected 4xx (deliberate): 3 (bad_model 3, invalid_body 0, unknown_key 0)" in lines
    assert "- a: b" in lines
    assert lines[-1] == "**Verdict: PASS**"
    assert report.render([], counts, ["x", "y"], {}).endswith("**Verdict: FAIL: x; y**\n")


def test_per_request_kib() -> None:
    # Gateway grows 1 MiB per 1000 requests in the second half.
    samples = [sample(t, "gateway", 100 + t / 100, 10, done=int(t * 10)) for t in range(0, 101, 10)]
    summaries = soak_samples.summarize(samples)
    assert report.per_request_kib(summaries, samples) == pytest.approx(1024 / 1000)
    assert report.per_request_kib([], samples) is None


def test_write_csv_has_one_row_per_sample(tmp_path: Path) -> None:
    rows = [sample(0.0, "gateway", 1.5, 3), sample(0.0, "engine", 2.5, 4, pid=20)]
    report.write_csv(rows, tmp_path / "s.csv")
    with (tmp_path / "s.csv").open() as f:
        got = list(csv.DictReader(f))
    assert [r["process"] for r in got] == ["gateway", "engine"]
    assert got[1] == {
        "t_s": "0.0",
        "process": "engine",
        "pid": "20",
        "rss_mib": "2.5",
        "fds": "4",
        "threads": "8",
        "requests_done": "0",
        "requests_failed": "0",
        "expected_errors": "0",
    }


# --- traffic mix -----------------------------------------------------------------------------


def test_choose_covers_the_mix() -> None:
    rng = random.Random(1)
    models = ["base", "soak-0", "soak-1", "soak-2"]
    actions = [traffic.choose(rng, models) for _ in range(4000)]
    kinds = Counter(a.kind for a in actions)
    assert set(kinds) == {"chat", "completion", *traffic.EXPECTED_STATUS}
    errors = sum(kinds[k] for k in traffic.EXPECTED_STATUS)
    assert 0.03 < errors / len(actions) < 0.07
    served = [a for a in actions if a.kind in ("chat", "completion")]
    assert {a.model for a in served} == set(models)
    assert 0.4 < sum(a.stream for a in served) / len(served) < 0.6


def test_body_for_each_kind() -> None:
    chat = orjson.loads(traffic.body_for(traffic.Action("chat", "m", True), "hi"))
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and chat["stream"] is True
    assert chat["max_tokens"] == traffic.MAX_TOKENS
    completion = orjson.loads(traffic.body_for(traffic.Action("completion", "m", False), "hi"))
    assert completion["prompt"] == "hi" and completion["stream"] is False
    assert traffic.path_for(traffic.Action("completion")) == "/v1/completions"
    assert traffic.path_for(traffic.Action("bad_model")) == "/v1/chat/completions"
    bad_model = orjson.loads(traffic.body_for(traffic.Action("bad_model", "m"), "hi"))
    assert bad_model["model"].startswith("no-such-model-")
    assert orjson.loads(traffic.body_for(traffic.Action("invalid_body", "m"), "hi"))["messages"] == "hi"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(traffic.body_for(traffic.Action("invalid_body", "m"), "hi", malformed=True))


def test_main_refuses_url_without_admin_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--url", "http://127.0.0.1:8000"])
    assert exc.value.code == 2
    assert "--url needs --admin-key" in capsys.readouterr().err


def _gateway(request: httpx.Request) -> httpx.Response:
    """A scripted gateway: answers by path and body, as the real one would."""
    headers = {"x-tailor-interaction-id": "int-1"}
    if request.url.path == "/v1/feedback":
        return httpx.Response(201, json={"id": "fb"})
    if request.headers["authorization"] != "Bearer sk-good":
        return httpx.Response(401, json={"error": {}})
    try:
        body = orjson.loads(request.content)
    except orjson.JSONDecodeError:
        return httpx.Response(400, json={"error": {}})
    if not isinstance(body.get("messages", []), list):
        return httpx.Response(400, json={"error": {}})
    if body["model"] == "broken":
        return httpx.Response(500, json={"error": {}})
    if body["model"].startswith("no-such-model-"):
        return httpx.Response(404, json={"error": {}})
    if body["model"] == "cut":  # a stream that stops without [DONE]
        return httpx.Response(200, headers=headers, content=b'data: {"choices": []}\n\n')
    if body.get("stream"):
        return httpx.Response(200, headers=headers, content=b'data: {"choices": []}\n\ndata: [DONE]\n\n')
    return httpx.Response(200, headers=headers, json={"choices": [{"text": "x"}]})


def _perform(actions: list[traffic.Action], seed: int = 3) -> Counts:
    async def go() -> Counts:
        counts = Counts()
        transport = httpx.MockTransport(_gateway)
        headers = {"authorization": "Bearer sk-good"}
        async with httpx.AsyncClient(base_url="http://t", transport=transport, headers=headers) as client:
            rng = random.Random(seed)
            for action in actions:
                await traffic.perform(client, action, rng, counts)
        return counts

    return asyncio.run(go())


def test_perform_counts_answers_feedback_and_expected_errors() -> None:
    served = [traffic.Action(k, "base", s) for k in ("chat", "completion") for s in (False, True)] * 10
    errors = [traffic.Action(k, "base") for k in traffic.EXPECTED_STATUS] * 2
    counts = _perform(served + errors)
    assert counts.failed == 0, counts.failures
    assert counts.expected_errors == 6
    feedback = counts.by_kind["feedback"]
    assert 0 < feedback < 40  # a quarter of the 40 answers, give or take
    assert counts.done == 40 + feedback
    assert counts.by_kind["chat stream"] == 10 and counts.by_kind["unknown_key"] == 2


def test_perform_counts_wrong_statuses_and_cut_streams_as_failures() -> None:
    counts = _perform([traffic.Action("chat", "broken"), traffic.Action("chat", "cut", True)])
    assert counts.failed == 2 and counts.done == 0
    assert counts.failures[0] == "chat broken: HTTP 500 (expected 200)"
    assert counts.failures[1] == "chat stream cut: HTTP 200 (expected 200) stream ended without [DONE]"


def test_sampler_ticks_until_the_deadline_then_samples_once_at_stop(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, 1, "python -m gateway.cli serve")
    cfg = cli.SoakConfig(minutes=0.01, sample_s=0.25)  # deadline 0.6 s: ticks at 0, 0.25, 0.5

    async def go() -> list[Sample]:
        stop = asyncio.Event()
        t0 = time.monotonic()
        task = asyncio.create_task(cli.sampler(ProcFS(tmp_path), 10, cfg, Counts(), t0, stop))
        await asyncio.sleep(0.9)  # past the deadline: no tick at 0.75
        stop.set()
        return await task

    times = [s.t_s for s in asyncio.run(go())]
    assert len(times) == 4
    assert times[:3] == pytest.approx([0.0, 0.25, 0.5], abs=0.1)
    assert times[3] == pytest.approx(0.9, abs=0.1)
