"""Runs a Python grader's `grade(sample, item)` inside the sandbox (see sandbox_boot).

Copied into the sandbox as /runner.py and run with the bare interpreter (`-I -S`): standard
library only. Reads `{"source", "sample", "item"}` as JSON on stdin; the grader's own output
(print, tracebacks) goes to stderr; the answer is one JSON object on the original stdout:
`{"reward": float}` or `{"error": "..."}`.
"""

import json
import math
import os
import sys
import traceback

MAX_DETAIL_CHARS = 2000


def main() -> None:
    payload = json.loads(sys.stdin.buffer.read())
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the grader prints joins its stderr, never the answer
    try:
        namespace = {"__name__": "grader"}
        exec(compile(payload["source"], "grader.py", "exec"), namespace)  # noqa: S102 - the sandbox's purpose
        grade = namespace.get("grade")
        if not callable(grade):
            answer = {"error": "the source defines no function grade(sample, item)"}
        else:
            value = grade(payload["sample"], payload["item"])
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                answer = {"error": f"grade() returned {type(value).__name__} {str(value)[:80]!r}, not a finite number"}
            else:
                answer = {"reward": float(value)}
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are the grader's too
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        # The frames of this file say nothing to the grader's author.
        text = "".join(line for line in lines if "/runner.py" not in line)
        answer = {"error": text[-MAX_DETAIL_CHARS:]}
    os.write(answer_fd, json.dumps(answer).encode())


main()
