"""Where a reinforcement job's answers are sampled: its `sampler` hyperparameter, decided here.

"engine": on the worker's vLLM engine (the one its evaluation and the graders' tenant models
use: trainer.worker.grading), each step's LoRA loaded there by the training process
(trainer.compute.rollout). "trainer": TRL's generate in the training process. "auto": the
engine wherever it can run, the trainer otherwise. The engine cannot sample for a job on
another base than the engine's, a full fine-tune (no LoRA to load: the whole model changes
every step), a sharded (FSDP) run (no rank holds the whole LoRA), a worker without an engine
while it trains (a GPU worker without TAILOR_EVAL_ENGINE_URL stops its own to give training
the device), or a lora_rank above the engines' --max-lora-rank; "engine" then fails the job
with a 400 on the hyperparameter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from core.errors import bad_request
from trainer import hyperparameters
from trainer.compute.engine import EngineClient
from trainer.compute.rollout import NAME_PREFIX
from trainer.hyperparameters import SAMPLER_ENGINE, SAMPLER_TRAINER
from trainer.jobs import JobInfo

if TYPE_CHECKING:
    from trainer.worker.loop import Worker

log = logging.getLogger("tailor.trainer")


@dataclass(frozen=True)
class Sampling:
    sampler: str  # SAMPLER_ENGINE or SAMPLER_TRAINER
    why: str = ""  # why the trainer samples, when the engine cannot

    @property
    def on_engine(self) -> bool:
        return self.sampler == SAMPLER_ENGINE

    def describe(self) -> str:
        if self.on_engine:
            return "Answers are sampled on the worker's vLLM engine, each step's adapter loaded there"
        return "Answers are sampled by the trainer (TRL's generate)" + (f": {self.why}" if self.why else "")


def engine_obstacle(w: Worker, job: JobInfo, hp: hyperparameters.Resolved) -> str:
    """Why this run cannot sample on the worker's engine ("" when it can)."""
    if not w.base_of(job).default:
        # The engine the graders' models answer on serves the default base (trainer.job_base
        # keeps reinforcement there today); an adapter of another base must not load into it.
        return "the job trains on another base than the worker's engine serves"
    if hp.full_parameters:
        return "a full fine-tune has no adapter to load into the engine"
    if w.placement.shards(full_parameters=False):
        return "the run shards its model (FSDP), so no process holds the whole adapter"
    if not w.engines.keep_own_engine and not w.settings.eval_engine_url:
        return "this worker has no engine while it trains (the operator sets TAILOR_EVAL_ENGINE_URL for one)"
    if hp.lora_rank > w.settings.engine_max_lora_rank:
        return f"lora_rank {hp.lora_rank} is above the engine's --max-lora-rank {w.settings.engine_max_lora_rank}"
    return ""


def sampling_for(w: Worker, job: JobInfo, hp: hyperparameters.Resolved) -> Sampling:
    """The sampler of the job's run; a 400 when it asked for the engine and the engine cannot."""
    if job.method != hyperparameters.REINFORCEMENT or hp.sampler == SAMPLER_TRAINER:
        return Sampling(SAMPLER_TRAINER)
    obstacle = engine_obstacle(w, job, hp)
    if not obstacle:
        return Sampling(SAMPLER_ENGINE)
    if hp.sampler == SAMPLER_ENGINE:
        raise bad_request(f'sampler "engine" cannot run here: {obstacle}.', param="hyperparameters.sampler")
    return Sampling(SAMPLER_TRAINER, obstacle)


def rollout_name(job_id: str) -> str:
    """The stem of the engine's names for the job's step adapters (trainer.compute.rollout)."""
    return f"{NAME_PREFIX}-{job_id}"


def unload_leftovers(engine: EngineClient, stem: str) -> None:
    """Unload the step adapters a run left on the engine (one that failed or was stopped)."""
    try:
        r = engine.http.get("/v1/models", timeout=5.0)
        ids = [str(m.get("id")) for m in r.json().get("data", [])] if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        log.warning("could not list the adapters of %s", engine.url, exc_info=True)
        return
    for name in ids:
        if name.startswith(stem + "-"):
            engine.unload_adapter(name)
