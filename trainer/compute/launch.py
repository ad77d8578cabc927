"""The training process, and the worker's side of it.

    python -m trainer.compute.launch RECIPE.json

runs one recipe (trainer.compute.recipe) in this process. The worker starts it through
`start_command`: one plain process for one device, or one process per device under
`accelerate launch --multi_gpu` (GPUs: DDP, NCCL) or under torch's own elastic launcher
(`torch.distributed.run`, CPU: DDP over gloo - the path CI runs with 2 processes so the
distributed code is tested on every commit). Processes talk back only through files: rank
0 appends JSON lines to the recipe's progress file (steps, checkpoints, evaluations, then the result or
the error); the worker creates the stop file to cancel, the pause file to pause. Exit codes:
0 done, 2 refused (a Tailor error, e.g. nothing to learn), 3 cancelled, 4 paused (after
saving a checkpoint), anything else a crash.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.child_env import store_credential_prefixes
from core.errors import TailorError
from trainer.compute.placement import Placement
from trainer.compute.recipe import EvalInfo, Recipe, StepInfo, TrainingCancelled, TrainingPaused, TrainResult

log = logging.getLogger("tailor.trainer")

EXIT_REFUSED, EXIT_CANCELLED, EXIT_PAUSED = 2, 3, 4
# The worker's pid, for the training processes to see it go (trainer.compute.callbacks): they
# run in sessions of their own, so nothing else ends them when a worker is killed, and the
# job's next attempt would train beside an orphan still holding the devices.
PARENT_ENV = "TAILOR_TRAINING_PARENT_PID"
_LOG_TAIL_BYTES = 4000
# What training processes never need of the worker's environment: they read no database or
# store (the worker hands them local files and stores what they write), seal nothing, call no
# judge, teacher or serving engine, and reach the evaluation engine only with the key the
# worker adds for the run (trainer.reward_models.ENGINE_AUTH_ENV). They parse tenants' data:
# what they do not hold cannot leak from them.
WITHHELD_FROM_TRAINING = frozenset(
    {
        "TAILOR_DATABASE_URL",
        "TAILOR_SECRET_KEY",
        "TAILOR_ADMIN_KEY",
        "TAILOR_ENGINE_API_KEY",
        "TAILOR_EVAL_ENGINE_API_KEY",
        "TAILOR_JUDGE_API_KEY",
        "TAILOR_BASE_MODELS",  # its entries' keys
        "TAILOR_ENGINE_ADAPTER_SOURCE",  # url mode asks for the engine key withheld above
        "TAILOR_TEACHER_KEY_ENV_ALLOWLIST",
    }
)
WITHHELD_PREFIXES = store_credential_prefixes()


def training_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment less what training processes never need (and the variables the
    operator lets distillation jobs name as a teacher's key)."""
    allowlist = environ.get("TAILOR_TEACHER_KEY_ENV_ALLOWLIST", "")
    teacher_keys = {entry.partition("=")[0].strip() for entry in allowlist.split(",")}
    return {
        name: value
        for name, value in environ.items()
        if name not in WITHHELD_FROM_TRAINING and name not in teacher_keys and not name.startswith(WITHHELD_PREFIXES)
    }


def start_command(recipe_path: Path, placement: Placement) -> list[str]:
    """The command line that runs the recipe on `placement`."""
    entry = ["-m", "trainer.compute.launch", str(recipe_path)]
    if not placement.distributed:
        return [sys.executable, *entry]
    if placement.device == "cuda":
        gpus = ",".join(str(g) for g in placement.gpus)
        return [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(placement.processes), "--gpu_ids", gpus, "--num_machines", "1", *entry,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(placement.processes), *entry,
    ]  # fmt: skip


class _Progress:
    """Reads the progress file's new complete lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


def _stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _signal_stop(recipe: Recipe, request: bool | str | None) -> None:
    """Tell the run's processes to stop: the pause file for "pause", else the stop file."""
    if not request:
        return
    if request != "pause":
        Path(recipe.stop_path).touch()
    elif recipe.pause_path:
        Path(recipe.pause_path).touch()


def run_training(
    recipe: Recipe,
    placement: Placement,
    work_dir: Path,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    on_checkpoint: Callable[[int, float, Path], None] | None = None,
    on_evaluation: Callable[[EvalInfo], None] | None = None,
    should_stop: Callable[[], bool | str | None] | None = None,
    poll_s: float = 0.5,
    check_stop_every_s: float = 2.0,
    env: Mapping[str, str] | None = None,
) -> TrainResult:
    """Run `recipe` in its own process(es) on `placement`; report progress; return the result.

    should_stop() is asked every check_stop_every_s: "pause" pauses the run (it saves a
    checkpoint, reported through on_checkpoint, then TrainingPaused; the recipe needs a
    pause_path), anything else true cancels it (TrainingCancelled). A refused run raises its
    TailorError; a crash raises a 500 in Tailor's words, the process's last output going to
    this process's log only. `env`: what the processes' environment adds to this one's
    (training_environment).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    # The run is where it is placed, whatever the caller filled in; and it starts clean:
    # an earlier attempt's result line or stop file must not end this one.
    recipe = recipe.placed(placement)
    for leftover in (recipe.progress_path, recipe.stop_path, recipe.pause_path):
        if leftover:
            Path(leftover).unlink(missing_ok=True)
    recipe_path = work_dir / "recipe.json"
    recipe.save(recipe_path)
    progress = _Progress(Path(recipe.progress_path))
    log_path = work_dir / "train.log"
    result: TrainResult | None = None
    refused: TailorError | None = None
    cancelled_at: int | None = None
    paused: TrainingPaused | None = None
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            start_command(recipe_path, placement),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**training_environment(os.environ), PARENT_ENV: str(os.getpid()), **(env or {})},
        )
        try:
            last_check = time.monotonic()
            while True:
                done = proc.poll() is not None
                for record in progress.new():
                    event = record.get("event")
                    if event == "step" and on_step is not None:
                        on_step(StepInfo(**{k: v for k, v in record.items() if k != "event"}))
                    elif event == "checkpoint" and on_checkpoint is not None:
                        on_checkpoint(int(record["step"]), float(record["loss"]), Path(record["path"]))
                    elif event == "evaluation" and on_evaluation is not None:
                        on_evaluation(EvalInfo(**{k: v for k, v in record.items() if k != "event"}))
                    elif event == "result":
                        result = TrainResult.from_json({k: v for k, v in record.items() if k != "event"})
                    elif event == "error":
                        refused = TailorError(
                            int(record["status"]), record["message"], code=record.get("code"), param=record.get("param")
                        )
                    elif event == "cancelled":
                        cancelled_at = int(record["step"])
                    elif event == "paused":
                        paused = TrainingPaused(**{k: v for k, v in record.items() if k != "event"})
                if done:
                    break
                if should_stop is not None and time.monotonic() - last_check >= check_stop_every_s:
                    last_check = time.monotonic()
                    _signal_stop(recipe, should_stop())
                time.sleep(poll_s)
        finally:
            _stop_group(proc)
    if result is not None and proc.returncode == 0:
        return result
    if cancelled_at is not None or proc.returncode == EXIT_CANCELLED:
        raise TrainingCancelled(cancelled_at or 0)
    if paused is not None and proc.returncode == EXIT_PAUSED:
        raise paused
    if refused is not None:
        raise refused
    tail = log_path.read_bytes()[-_LOG_TAIL_BYTES:].decode("utf-8", "replace")
    log.error("training process exited with code %s; its last output:\n%s", proc.returncode, tail)
    raise TailorError(500, f"the training process failed (exit code {proc.returncode})", code="training_failed")


def main(argv: Sequence[str] | None = None) -> int:
    # A training process never runs vLLM in-process (it samples on an engine over HTTP:
    # trainer.compute.rollout), but TRL imports vLLM whenever it is installed, which costs
    # every training process seconds of start-up; marked absent, TRL skips it.
    sys.modules.setdefault("vllm", None)  # type: ignore[arg-type]  # None: "not installed"
    from trainer.compute import run
    from trainer.compute.callbacks import write_progress

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m trainer.compute.launch RECIPE.json", file=sys.stderr)
        return 64
    recipe = Recipe.load(Path(args[0]))
    progress = Path(recipe.progress_path)
    try:
        result = run.train(recipe)
    except TrainingCancelled as e:
        write_progress(progress, {"event": "cancelled", "step": e.step})
        return _leave_process_group(EXIT_CANCELLED)
    except TrainingPaused as e:
        write_progress(progress, {"event": "paused", **e.as_json()})
        return _leave_process_group(EXIT_PAUSED)
    except TailorError as e:
        write_progress(
            progress, {"event": "error", "status": e.status, "message": e.message, "code": e.code, "param": e.param}
        )
        return _leave_process_group(EXIT_REFUSED)
    write_progress(progress, {"event": "result", **result.as_json()})
    return _leave_process_group(0)


def _leave_process_group(code: int) -> int:
    """Wait for every rank, then tear the process group down; returns `code`.

    Without this a rank that finishes first (not rank 0, which still saves the adapter)
    exits while its peers' connections are open: gloo may then throw in its I/O thread and
    abort the process (SIGABRT), and the launcher fails a run that had succeeded.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
