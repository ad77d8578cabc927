"""Training runs the trainer benchmarks launch themselves: rows written as JSONL, a recipe in a work directory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.compute.recipe import Recipe


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe_in(work: Path, method: str, model_dir: Path, data: Path, out: str = "adapter", **knobs: Any) -> Recipe:
    """A `method` recipe on `data` that saves to work/`out`, with its progress and stop files in `work`."""
    return Recipe(
        method=method,
        base_model_dir=str(model_dir),
        data_path=str(data),
        out_dir=str(work / out),
        progress_path=str(work / "progress.jsonl"),
        stop_path=str(work / "STOP"),
        **knobs,
    )
