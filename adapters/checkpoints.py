"""Fine-tuning checkpoints as models a tenant can call.

A job's checkpoint is named like OpenAI's `ft:...:ckpt-step-N`, in Tailor's model-id form:

    <adapter name>:<job id>:ckpt-step-<N>        e.g. support:ftjob-3f2a...:ckpt-step-40

The job id makes the name unique (two jobs of one adapter both have a step 40); ':' never
appears in an adapter name (adapters.validation), so the name cannot collide with an
adapter, an alias or a pinned `name@vN`.

The trainer stores each checkpoint's adapter in the adapter store when it saves it
(`store_checkpoint`: validated like any registered adapter, content-addressed, so the final
checkpoint and the version the job registers share their files) and records its digest on
the checkpoint's row. Such a checkpoint is callable: `adapters.registry.route` sends a
request for its name to those files, and `adapters.model_names` lists it. It is not a
version: it takes no version number and is never promoted; it lives as long as its job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from adapters.store import AdapterStore
from adapters.validation import BaseModelSpec, validate_adapter_dir
from adapters.version_files import validate_version_dir

_NAME = re.compile(r"(?P<adapter>[^:@/]+):(?P<job>ftjob-[0-9a-z]+):ckpt-step-(?P<step>[1-9][0-9]{0,9})")


@dataclass(frozen=True)
class CheckpointName:
    adapter_name: str
    job_id: str
    step: int

    def __str__(self) -> str:
        return checkpoint_model(self.adapter_name, self.job_id, self.step)


def checkpoint_model(adapter_name: str, job_id: str, step: int) -> str:
    """The model id of a job's checkpoint at `step`."""
    return f"{adapter_name}:{job_id}:ckpt-step-{step}"


def parse(model: str) -> CheckpointName | None:
    """The parts of a checkpoint's model id; None for any other name."""
    match = _NAME.fullmatch(model)
    if match is None:
        return None
    return CheckpointName(match["adapter"], match["job"], int(match["step"]))


def store_checkpoint(
    store: AdapterStore,
    local_dir: Path,
    *,
    base: BaseModelSpec,
    max_rank: int,
    max_bytes: int,
    max_model_bytes: int = 0,
) -> str:
    """Validate a checkpoint's directory as servable and store it; returns its digest.

    An adapter's, or with `max_model_bytes` a whole model's (a full fine-tune's checkpoint).
    """
    if max_model_bytes:
        validate_version_dir(
            local_dir, base=base, max_rank=max_rank, max_bytes=max_bytes, max_model_bytes=max_model_bytes
        )
    else:
        validate_adapter_dir(local_dir, base=base, max_rank=max_rank, max_bytes=max_bytes)
    return store.put_dir(local_dir)
