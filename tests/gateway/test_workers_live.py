"""A real `tailor serve` with TAILOR_WORKERS=2 in front of the instant mock engine.

Checks what only real processes show: requests are answered by both workers, /metrics adds
up both workers' counters, a worker killed with SIGKILL is replaced (and the gateway keeps
answering meanwhile), and SIGTERM to the parent stops every process it started.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from loadtests.admin_api import create_tenant_key
from loadtests.launcher import MODEL_DIR
from loadtests.local_server import LocalTailor, local_tailor
from tests.openai_schema import validate


def _workers(parent: psutil.Process) -> list[psutil.Process]:
    """The parent's gateway workers (uvicorn starts them with multiprocessing's spawn); a worker
    that has just died (a zombie until uvicorn reaps it) is none."""
    out = []
    for p in parent.children():
        try:
            if "spawn_main" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:  # ZombieProcess included
            continue
    return out


def _wait(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _requests_by_pid(shared: Path) -> dict[int, float]:
    """tailor_requests_total as each worker wrote it into the shared metrics directory."""
    counts = {}
    for path in shared.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        counts[int(path.stem.split("_")[1])] = sum(
            value for key, value, _ts, _pos in values if json.loads(key)[1] == "tailor_requests_total"
        )
    return counts


def _scrape(server: LocalTailor) -> dict[str, float]:
    """Sums per sample name over /metrics."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=10).text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def _send(server: LocalTailor, key: str, n: int) -> None:
    body = {"model": MODEL_DIR.name, "messages": [{"role": "user", "content": "hi"}]}

    def one(_: int) -> None:
        # A connection per request, so the kernel hands them to either worker.
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        validate(r.json(), "CreateChatCompletionResponse")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def test_two_workers_share_the_port_the_metrics_and_stop_together() -> None:
    with local_tailor(MODEL_DIR, engine="mock", env_extra={"TAILOR_WORKERS": "2"}) as server:
        parent = psutil.Process(server.process.pid)
        workers = _workers(parent)
        assert len(workers) == 2
        # One trainer per host, in the parent, not one per worker.
        trainers = [p for p in parent.children(recursive=True) if "trainer.worker" in p.cmdline()]
        assert len(trainers) == 1 and trainers[0].ppid() == parent.pid
        shared = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
        key = create_tenant_key(server, "workers")

        sent = 0
        while len([n for n in _requests_by_pid(shared).values() if n]) < 2:
            assert sent < 400, f"one worker answered everything: {_requests_by_pid(shared)}"
            _send(server, key, 20)
            sent += 20
        assert {pid for pid, n in _requests_by_pid(shared).items() if n} == {w.pid for w in workers}

        # /metrics, whichever worker answers it, counts the requests of both.
        _wait(lambda: _scrape(server).get("tailor_requests_total") == sent, 10)
        assert _scrape(server)["tailor_gateway_processes"] == 2

        # A worker killed outright is replaced; the other one answers meanwhile.
        os.kill(workers[0].pid, signal.SIGKILL)
        _send(server, key, 10)
        sent += 10
        _wait(lambda: len(_workers(parent)) == 2 and workers[0].pid not in {w.pid for w in _workers(parent)})
        _wait(lambda: _scrape(server).get("tailor_gateway_processes") == 2)
        _send(server, key, 10)
        sent += 10
        # The dead worker's counts are kept: nothing answered is lost from the total.
        _wait(lambda: _scrape(server).get("tailor_requests_total") == sent, 10)

        # SIGTERM to the parent stops everything it started, and removes the metrics directory.
        below = parent.children(recursive=True)
        assert below
        parent.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(below, timeout=10)
        assert alive == [], f"left running: {alive}"
        assert not shared.exists()
