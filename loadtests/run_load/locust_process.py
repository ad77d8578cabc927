"""Locust as a bounded subprocess: its --run-time parsed here, its command line, its stop."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtests.launcher import ROOT, progress

LOCUSTFILE = Path(__file__).resolve().parents[1] / "locustfile.py"
# Beyond --run-time: locust start-up and shutdown; the subprocess is killed after this.
LOCUST_GRACE_S = 120.0


_TIMESPAN = re.compile(r"(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?")


def parse_timespan(text: str) -> float:
    """Locust's --run-time syntax ("90", "30s", "5m", "1h30m"). Parsed here, not by importing
    locust: its import monkey-patches this whole process with gevent."""
    text = text.strip()
    if text.isdigit():
        return float(text)
    match = _TIMESPAN.fullmatch(text)
    if not text or match is None or not any(match.groups()):
        raise SystemExit(f"invalid --run-time {text!r}: use seconds or a span such as 30s, 5m or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def run_locust(args: argparse.Namespace, url: str, out: Path, env: dict[str, str], extra: Sequence[str]) -> int:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        args.run_time,
        "--host",
        url,
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "locust.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        *extra,
    ]
    limit = parse_timespan(args.run_time) + LOCUST_GRACE_S
    progress(f"locust: {args.users} users (spawn {args.spawn_rate}/s) for {args.run_time} against {url} ...")
    with (out / "locust.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            progress(f"locust still running {limit:.0f} s after start: stopping it")
            return -1
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
