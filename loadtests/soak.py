"""Soak test: sustained mixed traffic for a bounded time, with memory and file descriptors watched.

    python -m loadtests.soak                                  # 10 min, 4 streams, a sample every 10 s
    python -m loadtests.soak --minutes 4 --sample-s 10 --csv soak.csv
    python -m loadtests.soak --url http://127.0.0.1:8000 --admin-key adm-... [--pid PID]

Without --url it starts a throwaway Tailor (`loadtests.local_server`, trainer worker on, as users
run it). With --url it uses a running one on this machine: the gateway's pid is the process
listening on the URL's port (or --pid), and the adapters are registered by path, so the gateway
must be able to read this machine's files. Either way it builds --adapters small random PEFT LoRA
adapters (run_load's builder), registers them for a fresh tenant, touches every model once, and
then --concurrency workers send requests back to back for --minutes:

* chat completions and text completions, half of them streamed, on the base model and each
  adapter alike (max_tokens 16);
* after a quarter of the answers, a feedback post rating it (`x-tailor-interaction-id`);
* 1 request in 20 a deliberate error: an unknown model (404), an invalid body (400: bad JSON or
  a wrong type), an unknown API key (401). These count as expected errors; any other status is a
  failure.

Every --sample-s seconds it reads /proc for the gateway and each process below it (the vLLM
engine and its engine core, the trainer worker, ...): RSS, open file descriptors, threads, along
with the requests done and failed so far. The first half of the run is warm-up (allocator arenas,
caches, connection pools fill); the verdict looks at the second half:

* file descriptors at the end within +-5 of their value at the first sample after warm-up;
* the least-squares RSS slope under 50 MiB/h for Python processes (gateway, trainer) and
  100 MiB/h for the engine's, unless the fitted growth over the window stays under the noise
  floor (4 MiB; 16 MiB for the engine). Why these numbers: a leak worth finding grows without
  bound, and 50 MiB/h is ~1.2 GiB a day, which would take a ~200 MiB gateway down within days; at
  this soak's rate of a few requests per second it still bounds a per-request leak to a few KiB,
  far more than a finished request may keep (its interaction row goes to the database). The
  engine's heap is GiBs (weights, a fixed KV cache) and moves with the batch shapes it meets, so
  it gets twice the room. The floor is there because a short window turns allocator wobble into a
  steep slope: 2 MiB over the 2-minute second half of a 4-minute run reads as 60 MiB/h;
* no process restarted, vanished or appeared after warm-up, and no request failed.

Prints a markdown table (per process: RSS start / end / max, slope, FDs, threads) and the
verdict, writes every sample to --csv, and exits 1 when the verdict fails (2 when setup fails).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import orjson

from loadtests.bench_churn import ADAPTER_RANK, ADAPTER_TARGETS
from loadtests.bench_gateway import PROMPTS, BenchConfig, Target, _exit_on_sigterm, make_client, request_body
from loadtests.local_server import MODEL_DIR, LocalTailor, _progress, create_tenant_key, local_tailor
from loadtests.run_load import AdapterSpec, _check, build_adapters

MAX_TOKENS = 16
FEEDBACK_SHARE = 0.25  # of successful answers, rated right after
ERROR_SHARE = 0.05  # of requests, deliberately wrong
STREAM_SHARE = 0.5
SEED_BASE = 9100  # adapter seeds; other benchmarks use other ranges, so caches never collide
FD_TOLERANCE = 5
MIN_FIT_POINTS = 3
MIB = 1024 * 1024

# Expected answers to the deliberate errors; anything else is a failure.
EXPECTED_STATUS = {"bad_model": 404, "invalid_body": 400, "unknown_key": 401}


@dataclass(frozen=True)
class Limits:
    slope_mib_h: float  # RSS slope over the second half above this is a leak ...
    noise_mib: float  # ... when the fitted growth over that window is also above this


PYTHON_LIMITS = Limits(slope_mib_h=50.0, noise_mib=4.0)
ENGINE_LIMITS = Limits(slope_mib_h=100.0, noise_mib=16.0)


def limits_for(process: str) -> Limits:
    return ENGINE_LIMITS if process.split("/", 1)[0] == "engine" else PYTHON_LIMITS


# --- reading /proc -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStats:
    rss_mib: float
    fds: int
    threads: int


def parse_status(text: str) -> tuple[int, int]:
    """(VmRSS in KiB, Threads) from /proc/<pid>/status; a kernel thread has no VmRSS (0)."""
    rss_kib = threads = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            rss_kib = int(value.split()[0])
        elif key == "Threads":
            threads = int(value.split()[0])
    return rss_kib, threads


def parse_ppid(stat: str) -> int:
    # The command name may contain spaces and parentheses; the fields follow the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def listen_inodes(tcp_table: str, port: int) -> set[int]:
    """Socket inodes listening on `port` in a /proc/net/tcp or tcp6 table."""
    found = set()
    for line in tcp_table.splitlines()[1:]:
        cols = line.split()
        # local_address is ADDR:PORT in hex; state 0A is LISTEN; the inode is column 9.
        if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
            found.add(int(cols[9]))
    return found


@dataclass(frozen=True)
class ProcFS:
    root: Path = Path("/proc")

    def stats(self, pid: int) -> ProcStats | None:
        """None when the process is gone (or not ours to read)."""
        try:
            rss_kib, threads = parse_status((self.root / str(pid) / "status").read_text())
            fds = len(os.listdir(self.root / str(pid) / "fd"))
        except (OSError, ValueError, IndexError):
            return None
        return ProcStats(rss_mib=rss_kib / 1024, fds=fds, threads=threads)

    def parents(self) -> dict[int, int]:
        """pid -> parent pid for every process we can see."""
        out = {}
        for stat in self.root.glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(stat.parent.name)] = parse_ppid(stat.read_text())
        return out

    def name(self, pid: int) -> str:
        """What the process is: its command line (NULs as spaces), else its comm."""
        with contextlib.suppress(OSError):
            cmdline = (self.root / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").strip()
            if cmdline:
                return cmdline.decode(errors="replace")
        with contextlib.suppress(OSError):
            return (self.root / str(pid) / "comm").read_text().strip()
        return "?"

    def listening_pid(self, port: int) -> int | None:
        inodes: set[int] = set()
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                inodes |= listen_inodes((self.root / "net" / table).read_text(), port)
        wanted = {f"socket:[{i}]" for i in inodes}
        for fd_dir in self.root.glob("[0-9]*/fd"):
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in wanted for fd in fd_dir.iterdir()):
                    return int(fd_dir.parent.name)
        return None


def role(name: str) -> str:
    """A short, stable label for a process from its command line."""
    if "vllm.entrypoints" in name:
        return "engine"
    if "trainer.worker" in name:
        return "trainer"
    if "gateway.cli" in name and " serve" in name:
        return "gateway"
    first = name.split()[0] if name.split() else "?"
    # multiprocessing children run `python -c "from multiprocessing..."`; say which.
    for marker in ("resource_tracker", "spawn_main", "forkserver"):
        if marker in name:
            return marker
    return os.path.basename(first)


def label_tree(root_pid: int, parents: Mapping[int, int], name: Callable[[int], str]) -> dict[str, int]:
    """label -> pid for `root_pid` ("gateway") and every process below it ("engine/VLLM::EngineCore")."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    labels = {"gateway": root_pid}
    todo = [(root_pid, "")]
    while todo:
        pid, prefix = todo.pop(0)
        for child in sorted(children.get(pid, [])):
            base = prefix + role(name(child))
            label, n = base, 2
            while label in labels:  # two children alike: engine/python, engine/python#2
                label, n = f"{base}#{n}", n + 1
            labels[label] = child
            todo.append((child, label + "/"))
    return labels


# --- samples and their summary ---------------------------------------------------------------


@dataclass
class Counts:
    done: int = 0  # answered as intended: completions and feedback posts
    failed: int = 0
    expected_errors: int = 0  # deliberate errors answered with their expected 4xx
    by_kind: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # the first few, for the report


@dataclass(frozen=True)
class Sample:
    t_s: float
    process: str
    pid: int
    rss_mib: float
    fds: int
    threads: int
    requests_done: int
    requests_failed: int
    expected_errors: int


def take_sample(fs: ProcFS, gateway_pid: int, t_s: float, counts: Counts) -> list[Sample]:
    labels = label_tree(gateway_pid, fs.parents(), fs.name)
    out = []
    for label, pid in labels.items():
        stats = fs.stats(pid)
        if stats is not None:
            out.append(
                Sample(
                    round(t_s, 1),
                    label,
                    pid,
                    round(stats.rss_mib, 1),
                    stats.fds,
                    stats.threads,
                    counts.done,
                    counts.failed,
                    counts.expected_errors,
                )
            )
    return out


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) in value per hour; None when it cannot be fitted."""
    if len(points) < MIN_FIT_POINTS:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    sxx = sum((t - mean_t) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / sxx * 3600


@dataclass(frozen=True)
class ProcessSummary:
    process: str
    pids: tuple[int, ...]  # more than one: it was restarted
    rss_start: float
    rss_end: float
    rss_max: float
    rss_slope: float | None  # MiB/h over the second half
    rss_growth: float | None  # the fit's growth over the second half, MiB
    fds_start: int
    fds_warm: int | None  # at the first sample of the second half; None: not there then
    fds_end: int
    fds_max: int
    threads_start: int
    threads_end: int
    at_end: bool  # present in the last sample


def summarize(samples: Sequence[Sample]) -> list[ProcessSummary]:
    """Per process, in order of first appearance; the second half starts at half the last sample's time."""
    if not samples:
        return []
    end_t = max(s.t_s for s in samples)
    half = end_t / 2
    warm_t = min(s.t_s for s in samples if s.t_s >= half)
    by_process: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.t_s):
        by_process.setdefault(s.process, []).append(s)
    out = []
    for process, mine in by_process.items():
        second = [s for s in mine if s.t_s >= half]
        slope = slope_per_hour([(s.t_s, s.rss_mib) for s in second])
        window = second[-1].t_s - second[0].t_s if second else 0.0
        warm = next((s for s in mine if s.t_s == warm_t), None)
        out.append(
            ProcessSummary(
                process=process,
                pids=tuple(dict.fromkeys(s.pid for s in mine)),
                rss_start=mine[0].rss_mib,
                rss_end=mine[-1].rss_mib,
                rss_max=max(s.rss_mib for s in mine),
                rss_slope=slope,
                rss_growth=None if slope is None else slope * window / 3600,
                fds_start=mine[0].fds,
                fds_warm=warm.fds if warm else None,
                fds_end=mine[-1].fds,
                fds_max=max(s.fds for s in mine),
                threads_start=mine[0].threads,
                threads_end=mine[-1].threads,
                at_end=mine[-1].t_s == end_t,
            )
        )
    return out


def process_problems(s: ProcessSummary) -> list[str]:
    """Why this process does not look flat after warm-up; empty when it does."""
    if s.fds_warm is None:
        # Not there when warm-up ended: only a process that stays to the end counts (a new
        # worker appearing under steady load); one that came and went is left alone.
        return [f"{s.process}: appeared after warm-up"] if s.at_end else []
    problems = []
    if len(s.pids) > 1:
        problems.append(f"{s.process}: restarted (pids {', '.join(map(str, s.pids))})")
    if not s.at_end:
        problems.append(f"{s.process}: gone before the end")
    if abs(s.fds_end - s.fds_warm) > FD_TOLERANCE:
        problems.append(f"{s.process}: {s.fds_end} FDs at the end, {s.fds_warm} after warm-up (+-{FD_TOLERANCE})")
    lim = limits_for(s.process)
    if s.rss_slope is None or s.rss_growth is None:
        problems.append(f"{s.process}: fewer than {MIN_FIT_POINTS} samples after warm-up, no RSS slope")
    elif s.rss_slope > lim.slope_mib_h and s.rss_growth > lim.noise_mib:
        problems.append(
            f"{s.process}: RSS grows {s.rss_slope:.0f} MiB/h (limit {lim.slope_mib_h:.0f}), "
            f"+{s.rss_growth:.1f} MiB after warm-up (noise floor {lim.noise_mib:.0f})"
        )
    return problems


def verdict(summaries: Sequence[ProcessSummary], counts: Counts) -> list[str]:
    problems = [p for s in summaries for p in process_problems(s)]
    if not any(s.process == "gateway" for s in summaries):
        problems.append("the gateway process could not be read")
    if counts.failed:
        problems.append(f"{counts.failed} requests failed (first: {'; '.join(counts.failures[:3])})")
    if not counts.done:
        problems.append("no request was served")
    return problems


# --- output ----------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def process_row(s: ProcessSummary) -> list[str]:
    lim = limits_for(s.process)
    ok = "PASS" if not process_problems(s) else "FAIL"
    return [
        s.process,
        f"{_f(s.rss_start)} / {_f(s.rss_end)} / {_f(s.rss_max)}",
        f"{_f(s.rss_slope, 1)} (+{_f(s.rss_growth, 1)} MiB)" if s.rss_slope is not None else "n/a",
        f"< {lim.slope_mib_h:.0f}",
        f"{s.fds_start} / {'-' if s.fds_warm is None else s.fds_warm} / {s.fds_end} / {s.fds_max}",
        f"{s.threads_start} / {s.threads_end}",
        ok,
    ]


def render(
    summaries: Sequence[ProcessSummary], counts: Counts, problems: Sequence[str], settings: Mapping[str, str]
) -> str:
    header = [
        "process",
        "RSS MiB start / end / max",
        "RSS slope 2nd half MiB/h",
        "limit",
        "FDs start / warm / end / max",
        "threads start / end",
        "verdict",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    lines += ["| " + " | ".join(process_row(s)) + " |" for s in summaries]
    kinds = counts.by_kind
    served = ", ".join(f"{k} {kinds[k]}" for k in sorted(kinds) if k not in EXPECTED_STATUS)
    errors = ", ".join(f"{k} {kinds[k]}" for k in EXPECTED_STATUS)
    lines += [
        "",
        f"- requests served: {counts.done} ({served})",
        f"- failures: {counts.failed}",
        f"- expected 4xx (deliberate): {counts.expected_errors} ({errors})",
    ]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    verdict_line = "PASS" if not problems else "FAIL: " + "; ".join(problems)
    lines += ["", f"**Verdict: {verdict_line}**"]
    return "\n".join(lines) + "\n"


def per_request_kib(summaries: Sequence[ProcessSummary], samples: Sequence[Sample]) -> float | None:
    """The gateway's RSS slope spread over the requests it served meanwhile (KiB per request)."""
    gateway = next((s for s in summaries if s.process == "gateway"), None)
    half = max((s.t_s for s in samples), default=0.0) / 2
    # The request rate over the same window as the RSS slope (requests/h).
    rate = slope_per_hour(
        [(s.t_s, float(s.requests_done)) for s in samples if s.process == "gateway" and s.t_s >= half]
    )
    if gateway is None or gateway.rss_slope is None or not rate:
        return None
    return gateway.rss_slope * 1024 / rate


def write_csv(samples: Iterable[Sample], path: Path) -> None:
    names = [f.name for f in dataclasses.fields(Sample)]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=names)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(s) for s in samples)


# --- traffic ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    kind: str  # chat, completion, or one of EXPECTED_STATUS
    model: str = ""
    stream: bool = False


def choose(rng: random.Random, models: Sequence[str]) -> Action:
    if rng.random() < ERROR_SHARE:
        return Action(rng.choice(tuple(EXPECTED_STATUS)), models[0])
    kind = "chat" if rng.random() < 0.5 else "completion"
    return Action(kind, rng.choice(models), rng.random() < STREAM_SHARE)


def body_for(action: Action, prompt: str, *, malformed: bool = False) -> bytes:
    if action.kind == "invalid_body":
        # Malformed JSON or a wrong type (the caller picks): both must be a clean 400, not a 500.
        return b'{"model": ' if malformed else orjson.dumps({"model": action.model, "messages": "hi"})
    if action.kind == "completion":
        body: dict[str, Any] = {
            "model": action.model,
            "prompt": prompt,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": action.stream,
        }
    else:
        body = request_body(action.model, prompt, BenchConfig(max_tokens=MAX_TOKENS, stream=action.stream))
    if action.kind == "bad_model":
        body["model"] = "no-such-model-" + secrets.token_hex(4)
    return orjson.dumps(body)


def path_for(action: Action) -> str:
    return "/v1/completions" if action.kind == "completion" else "/v1/chat/completions"


@dataclass(frozen=True)
class Reply:
    status: int
    interaction_id: str | None = None
    error: str | None = None  # set when a 200 was not a complete answer


async def call(client: httpx.AsyncClient, action: Action, content: bytes, headers: dict[str, str]) -> Reply:
    if not action.stream:
        resp = await client.post(path_for(action), content=content, headers=headers)
        iid = resp.headers.get("x-tailor-interaction-id")
        if resp.status_code == 200 and not orjson.loads(resp.content).get("choices"):
            return Reply(200, iid, "answer without choices")
        return Reply(resp.status_code, iid)
    async with client.stream("POST", path_for(action), content=content, headers=headers) as resp:
        iid = resp.headers.get("x-tailor-interaction-id")
        if resp.status_code != 200:
            await resp.aread()
            return Reply(resp.status_code, iid)
        async for line in resp.aiter_lines():
            payload = line[5:].strip() if line.startswith("data:") else ""
            if payload == "[DONE]":
                return Reply(200, iid)
            if payload and "error" in orjson.loads(payload):
                return Reply(200, iid, f"stream error: {payload[:200]}")
    return Reply(200, iid, "stream ended without [DONE]")


def _fail(counts: Counts, what: str) -> None:
    counts.failed += 1
    if len(counts.failures) < 10:
        counts.failures.append(what)


async def perform(client: httpx.AsyncClient, action: Action, rng: random.Random, counts: Counts) -> None:
    prompt = PROMPTS[rng.randrange(len(PROMPTS))]
    headers = {"authorization": "Bearer sk-unknown-" + secrets.token_hex(8)} if action.kind == "unknown_key" else {}
    label = f"{action.kind}{' stream' if action.stream else ''} {action.model}"
    try:
        reply = await call(client, action, body_for(action, prompt, malformed=rng.random() < 0.5), headers)
    except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
        _fail(counts, f"{label}: {type(exc).__name__}: {exc}")
        return
    expected = EXPECTED_STATUS.get(action.kind, 200)
    if reply.status != expected or reply.error:
        _fail(counts, f"{label}: HTTP {reply.status} (expected {expected}) {reply.error or ''}".strip())
        return
    counts.by_kind[action.kind + (" stream" if action.stream else "")] += 1
    if action.kind in EXPECTED_STATUS:
        counts.expected_errors += 1
        return
    counts.done += 1
    if reply.interaction_id and rng.random() < FEEDBACK_SHARE:
        await post_feedback(client, reply.interaction_id, rng, counts)


async def post_feedback(client: httpx.AsyncClient, interaction_id: str, rng: random.Random, counts: Counts) -> None:
    body = {"interaction_id": interaction_id, "rating": rng.choice(("good", "bad"))}
    try:
        resp = await client.post("/v1/feedback", content=orjson.dumps(body))
    except httpx.HTTPError as exc:
        _fail(counts, f"feedback: {type(exc).__name__}: {exc}")
        return
    if resp.status_code != 201:
        _fail(counts, f"feedback: HTTP {resp.status_code} {resp.text[:200]}")
        return
    counts.done += 1
    counts.by_kind["feedback"] += 1


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 10.0
    concurrency: int = 4
    sample_s: float = 10.0
    adapters: int = 3
    seed: int = 1


async def sampler(
    fs: ProcFS, gateway_pid: int, cfg: SoakConfig, counts: Counts, t0: float, stop: asyncio.Event
) -> list[Sample]:
    """A sample now and every sample_s on the clock (no drift) before the deadline; one more at `stop`."""
    samples: list[Sample] = []
    deadline = t0 + cfg.minutes * 60
    k = 0
    while True:
        batch = await asyncio.to_thread(take_sample, fs, gateway_pid, time.monotonic() - t0, counts)
        samples += batch
        _progress(_sample_line(batch))
        if stop.is_set():
            return samples
        k += 1
        tick = t0 + k * cfg.sample_s
        # A tick at the deadline would land among the draining requests, next to the final sample.
        timeout = None if tick >= deadline else max(0.0, tick - time.monotonic())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout)


def _sample_line(batch: Sequence[Sample]) -> str:
    if not batch:
        return "sample: gateway not readable"
    head = batch[0]
    procs = ", ".join(f"{s.process} {s.rss_mib:.0f} MiB/{s.fds} fd" for s in batch)
    return f"t={head.t_s:6.0f} s  done {head.requests_done} failed {head.requests_failed}  {procs}"


async def soak(url: str, key: str, models: list[str], gateway_pid: int, cfg: SoakConfig) -> tuple[list[Sample], Counts]:
    counts = Counts()
    client = make_client(Target("gateway", url, models[0], key), BenchConfig(concurrency=cfg.concurrency))
    try:
        # Every model once, uncounted: adapter loads and first-request costs stay out of the run.
        for model in models:
            warm = Counts()
            await perform(client, Action("chat", model), random.Random(0), warm)
            if warm.failed:
                raise RuntimeError(f"warm-up request to {model} failed: {warm.failures[0]}")
        stop = asyncio.Event()
        t0 = time.monotonic()
        deadline = t0 + cfg.minutes * 60
        sampling = asyncio.create_task(sampler(ProcFS(), gateway_pid, cfg, counts, t0, stop))

        async def worker(i: int) -> None:
            rng = random.Random(cfg.seed * 1000 + i)
            while time.monotonic() < deadline:
                await perform(client, choose(rng, models), rng, counts)

        await asyncio.gather(*(worker(i) for i in range(cfg.concurrency)))
        stop.set()  # after the in-flight requests drained: the last sample sees the idle state
        return await sampling, counts
    finally:
        await client.aclose()


def _tenant_key(url: str, admin_key: str, tenant: str) -> str:
    # create_tenant_key reads only .url and .admin_key, so a running gateway can use it too.
    return create_tenant_key(cast(LocalTailor, SimpleNamespace(url=url, admin_key=admin_key)), tenant)


def setup_tenant(url: str, admin_key: str, tenant: str, adapters: Mapping[str, Path]) -> tuple[str, list[str]]:
    """A tenant with a key and the adapters registered; returns the key and the models (base first)."""
    key = _tenant_key(url, admin_key, tenant)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=120) as admin:
        for name, path in adapters.items():
            body = {"name": name, "path": str(path), "activate": True}
            _check(admin.post(f"/admin/tenants/{tenant}/adapters/register", json=body), f"registering {name}")
    r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    # Pinned versions (`name@vN`) are listed too; the soak sends to the names clients use.
    models = [str(m["id"]) for m in _check(r, "GET /v1/models", expect=200)["data"] if "@v" not in m["id"]]
    _progress(f"tenant {tenant}: models {', '.join(models)}")
    return key, models


def build(count: int, cache: Path) -> dict[str, Path]:
    specs = [AdapterSpec(rank=ADAPTER_RANK, targets=ADAPTER_TARGETS, seed=SEED_BASE + i) for i in range(count)]
    paths = build_adapters(specs, cache, MODEL_DIR)
    return {f"soak-{i}": paths[s] for i, s in enumerate(specs)}


def run(args: argparse.Namespace, cfg: SoakConfig, adapters: dict[str, Path]) -> tuple[list[Sample], Counts]:
    tenant = "soak-" + secrets.token_hex(3)  # fresh on a long-lived gateway too
    if args.url:
        pid = args.pid or ProcFS().listening_pid(urlsplit(args.url).port or 80)
        if pid is None:
            raise RuntimeError(f"no process of ours listens on {args.url}; pass --pid")
        key, models = setup_tenant(args.url, args.admin_key, tenant, adapters)
        return asyncio.run(soak(args.url, key, models, pid, cfg))
    with local_tailor(MODEL_DIR) as server:
        key, models = setup_tenant(server.url, server.admin_key, tenant, adapters)
        return asyncio.run(soak(server.url, key, models, server.process.pid, cfg))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.soak", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long traffic runs")
    p.add_argument("--concurrency", type=int, default=4, help="closed-loop workers")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between /proc samples")
    p.add_argument("--adapters", type=int, default=3, help="LoRA adapters beside the base model")
    p.add_argument("--seed", type=int, default=1, help="seed of the traffic mix")
    p.add_argument("--csv", type=Path, help="write every sample here")
    p.add_argument("--url", help="a running Tailor on this machine (default: start one)")
    p.add_argument("--admin-key", help="its admin key (with --url)")
    p.add_argument("--pid", type=int, help="the gateway's pid (with --url; default: who listens on its port)")
    p.add_argument("--adapter-cache", type=Path, help="reuse built adapters here (default: a temp dir, removed)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.url and not args.admin_key:
        p.error("--url needs --admin-key")
    if args.minutes <= 0 or args.sample_s <= 0 or args.concurrency < 1 or args.adapters < 0:
        p.error("--minutes and --sample-s must be > 0, --concurrency >= 1, --adapters >= 0")
    cfg = SoakConfig(
        minutes=args.minutes,
        concurrency=args.concurrency,
        sample_s=args.sample_s,
        adapters=args.adapters,
        seed=args.seed,
    )
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    cache = args.adapter_cache or Path(tempfile.mkdtemp(prefix="tailor-soak-adapters-"))
    load_before = os.getloadavg()
    try:
        samples, counts = run(args, cfg, build(cfg.adapters, cache) if cfg.adapters else {})
    except RuntimeError as exc:
        _progress(f"soak failed to run: {exc}")
        return 2
    finally:
        if args.adapter_cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    if args.csv:
        write_csv(samples, args.csv)
    summaries = summarize(samples)
    problems = verdict(summaries, counts)
    duration = max((s.t_s for s in samples), default=0.0)
    settings = {
        "run": f"{duration / 60:.1f} min, {cfg.concurrency} workers, a sample every {cfg.sample_s:g} s "
        f"({len({s.t_s for s in samples})} samples); warm-up = first half",
        "mix": f"chat and completions, {STREAM_SHARE:.0%} streamed, base + {cfg.adapters} adapters, "
        f"max_tokens {MAX_TOKENS}, feedback on {FEEDBACK_SHARE:.0%} of answers, {ERROR_SHARE:.0%} deliberate errors",
        "rate": f"{counts.done / duration:.2f} requests/s" if duration else "n/a",
        "gateway RSS slope per request": f"{_f(per_request_kib(summaries, samples), 2)} KiB",
        "machine": f"{len(os.sched_getaffinity(0))} CPUs, 1-min load before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f}",
    }
    print(render(summaries, counts, problems, settings), end="", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
