"""The rehearsal's trainer: one worker process (`python -m trainer.worker`) beside the gateways,
sharing their database, stores and sealing key, and what a tenant's fine-tuning job shows
when that worker is killed while it trains.

The worker gets the environment `tailor serve` gives its own trainer child
(gateway.trainer_process.trainer_env: no admin or engine key). It evaluates on an engine of its
own kind (TAILOR_EVAL_ENGINE_URL), never on a serving one. Its heartbeat bound
(TAILOR_TRAINER_STALE_AFTER_S) is short here so that a killed worker's job is requeued in
seconds, not the default ten minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import create_engine, text

from core.ids import as_utc
from core.states import TERMINAL_JOB_STATUSES
from gateway.trainer_process import trainer_env
from loadtests.admin_api import check
from loadtests.launcher import MODEL_DIR, ROOT, LocalEngine, descendants, log_tail, settings_from
from loadtests.ticket_routing import tickets

# The job's adapter; its rows: routing tickets (loadtests.ticket_routing), a few dozen.
TRAINED = "routing"
ROWS_PER_QUEUE = 6
# Few steps, small batches: seconds of training. The worker checkpoints every third of the
# steps (trainer.worker.training), so with 6 steps the first checkpoint comes after step 2
# with 4 to go; with 3, every step is checkpointed.
STEPS = 6
HYPERPARAMETERS = {"batch_size": 2, "learning_rate_multiplier": 5}
STALE_AFTER_S = 5.0
TRAINER_POLL_S = 0.5
JOB_TIMEOUT_S = 600.0
# A killed worker's training processes notice at their next step (trainer.compute.callbacks).
ORPHANS_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

T = TypeVar("T")


def worker_env(
    common: Mapping[str, str], data_dir: Path, eval_engine: LocalEngine, stale_after_s: float = STALE_AFTER_S
) -> dict[str, str]:
    """The worker's environment, as `tailor serve` would build it for its trainer child."""
    env = {
        **os.environ,
        **common,
        "TAILOR_DATA_DIR": str(data_dir),
        "TAILOR_BASE_MODEL_PATH": str(MODEL_DIR),
        "TAILOR_TRAINER_DEVICES": "cpu",
        "TAILOR_TRAINER_POLL_S": str(TRAINER_POLL_S),
        "TAILOR_TRAINER_STALE_AFTER_S": str(stale_after_s),
        "TAILOR_EVAL_ENGINE_URL": eval_engine.url,
        "TAILOR_EVAL_ENGINE_API_KEY": eval_engine.key,
    }
    return trainer_env(settings_from(env), env)


@dataclass
class TrainerWorker:
    """The trainer worker process, started again after each kill (each start logs to its own file)."""

    env: dict[str, str] = field(repr=False)
    work: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.work / f"trainer{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.work.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            # Its own process group: the kill takes the worker and whatever shares its group.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "trainer.worker"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def kill(self) -> list[int]:
        """SIGKILL to the worker's process group; the processes that were below it."""
        assert self.process is not None
        below = descendants(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        return below

    def stop(self) -> None:
        """SIGTERM (the worker stops between jobs), then SIGKILL to whatever is left."""
        if self.process is None or self.process.poll() is not None:
            return
        below = descendants(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            below = self.kill()
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie no longer does)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.2) -> T:
    deadline = time.monotonic() + timeout_s
    while (found := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(every_s)
    return found


# --------------------------------------------------------------------------- the job


def submit_job(gateway: str, key: str, base_model: str, steps: int = STEPS) -> str:
    """A supervised job of `steps` steps on a few dozen routing tickets, through `gateway`'s OpenAI routes; its id."""
    rows = [{"messages": [*t.messages(), {"role": "assistant", "content": t.queue}]} for t in tickets(ROWS_PER_QUEUE)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        uploaded = http.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("tickets.jsonl", data)})
        file_id = check(uploaded, "uploading the training file", expect=200)["id"]
        hyperparameters = {**HYPERPARAMETERS, "max_steps": steps}
        method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
        body = {"model": base_model, "training_file": file_id, "suffix": TRAINED, "method": method}
        return str(check(http.post("/v1/fine_tuning/jobs", json=body), "creating the job", expect=200)["id"])


@dataclass(frozen=True)
class Event:
    at: float  # Unix time
    message: str
    data: dict[str, Any]


@dataclass(frozen=True)
class JobState:
    status: str
    attempts: int
    events: list[Event]

    def checkpoints(self, until: float = float("inf")) -> list[int]:
        return [int(e.data["checkpoint_step"]) for e in self.events if "checkpoint_step" in e.data and e.at < until]

    def attempt_starts(self) -> list[Event]:
        return [e for e in self.events if re.search(r"\(attempt \d+\)$", e.message)]

    def steps(self, since: float = 0.0, until: float = float("inf")) -> list[Event]:
        return [e for e in self.events if "train_loss" in e.data and since <= e.at < until]


def _unix(value: datetime) -> float:
    return as_utc(value).timestamp()


def job_state(db_url: str, job_id: str) -> JobState:
    """The job's status, attempts and events, read from the database (their times to the microsecond)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            status, attempts = conn.execute(
                text("SELECT status, attempts FROM jobs WHERE id = :id"), {"id": job_id}
            ).one()
            rows = conn.execute(
                text("SELECT created_at, message, data FROM job_events WHERE job_id = :id ORDER BY id"), {"id": job_id}
            ).all()
    finally:
        engine.dispose()
    events = [Event(_unix(at), message, data if isinstance(data, dict) else {}) for at, message, data in rows]
    return JobState(str(status), int(attempts), events)


def job_end(db_url: str, job_id: str) -> str | None:
    """The job's final status; None while it is not final."""
    status = job_state(db_url, job_id).status
    return status if status in TERMINAL_JOB_STATUSES else None


# --------------------------------------------------------------------------- what the kill showed


@dataclass(frozen=True)
class KillFigures:
    """What the job's record and the processes say about one kill at `killed` (Unix time)."""

    state: JobState
    killed: float
    orphans: int  # processes below the killed worker
    orphans_gone_s: float | None  # None: some still run

    @property
    def steps_before(self) -> int:
        return max((int(e.data["step"]) for e in self.state.steps(until=self.killed)), default=0)

    def restart(self) -> Event | None:
        return next((e for e in self.state.attempt_starts() if e.at > self.killed), None)

    def first_step_after(self) -> Event | None:
        restart = self.restart()
        return next(iter(self.state.steps(since=restart.at)), None) if restart else None

    @property
    def redone(self) -> int | None:
        """Steps trained again after the restart (None: no training after it)."""
        first = self.first_step_after()
        return None if first is None else max(0, self.steps_before - int(first.data["step"]) + 1)

    @property
    def resumed(self) -> bool:
        """The next attempt went on from the last checkpoint before the kill, and said so: it
        redid at most the steps after that checkpoint."""
        saved, redone = self.state.checkpoints(until=self.killed), self.redone
        if not saved:
            return False
        said = any(
            e.message.startswith(f"Resuming from the checkpoint of step {max(saved)} ")
            and "after the previous attempt stopped" in e.message
            for e in self.state.events
            if e.at > self.killed
        )
        return said and redone is not None and redone <= self.steps_before - max(saved)

    def describe(self, evaluated_on: str) -> str:
        restart, first = self.restart(), self.first_step_after()
        resumed = "never restarted" if restart is None else f"restarted {restart.at - self.killed:.1f} s after the kill"
        redone = ""
        if first is not None:
            redone = (
                f", training again {first.at - self.killed:.1f} s after it from step {int(first.data['step'])}: "
                f"{self.redone} step(s) redone"
            )
        saved = self.state.checkpoints(until=self.killed)
        gone = "still running" if self.orphans_gone_s is None else f"gone {self.orphans_gone_s:.1f} s after the kill"
        return (
            f"killed after step {self.steps_before} (checkpoints then: {saved or 'none'}); {resumed}"
            f"{redone}; job {self.state.status} on attempt {self.state.attempts}; {self.orphans} process(es) "
            f"below the killed worker {gone}; evaluated on {evaluated_on}"
        )

    @property
    def passed(self) -> bool:
        return (
            self.state.status == "succeeded"
            and self.steps_before > 0
            and self.restart() is not None
            and self.resumed
            and self.orphans_gone_s is not None
        )


def wait_gone(pids: Sequence[int], since: float) -> float | None:
    """Seconds from `since` (monotonic) until none of `pids` runs; None if some still do after the timeout."""
    with contextlib.suppress(TimeoutError):
        wait_for("the killed worker's processes", lambda: not any(map(running, pids)) or None, ORPHANS_TIMEOUT_S)
        return time.monotonic() - since
    return None


def failure_hint(worker: TrainerWorker) -> str:
    return log_tail(worker.log_path, 30)
