"""A zero-weight LoRA of a given rank for the base model, used to test what an engine accepts.

Loading it on an engine proves the engine takes adapters of that rank at run time (see
`adapters.engine_checks`). Its B matrices are zero, so it would not change a single answer
even if someone sent a request to it. Written once per rank, atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from adapters.validation import CONFIG_FILE, MODULE_BLOCKS, WEIGHTS_FILE, BaseModelSpec

# One small projection is enough: vLLM checks the rank from the config, shapes per module.
_MODULE = "q_proj"


def write_probe_adapter(directory: Path, base: BaseModelSpec, rank: int) -> Path:
    """The probe adapter for `rank` under `directory`, written unless it is there already."""
    target = directory / f"rank-{rank}"
    if (target / CONFIG_FILE).is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=directory, prefix=".probe-"))
    try:
        _write(work, base, rank)
        try:
            os.rename(work, target)
        except OSError:
            # Another process wrote the same adapter first; theirs is as good as ours.
            if not (target / CONFIG_FILE).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _write(directory: Path, base: BaseModelSpec, rank: int) -> None:
    fan_in, fan_out = base.module_shapes[_MODULE]
    block = MODULE_BLOCKS[_MODULE]
    tensors: dict[str, np.ndarray] = {}
    for layer in range(base.num_layers):
        prefix = f"base_model.model.model.layers.{layer}.{block}.{_MODULE}"
        tensors[f"{prefix}.lora_A.weight"] = np.zeros((rank, fan_in), dtype=np.float16)
        tensors[f"{prefix}.lora_B.weight"] = np.zeros((fan_out, rank), dtype=np.float16)
    save_file(tensors, str(directory / WEIGHTS_FILE))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": rank,
        "target_modules": [_MODULE],
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
