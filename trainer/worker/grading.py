"""A reinforcement job's grader models, resolved by the worker for its training and evaluation.

Each model a score_model or label_model grader names is the operator's (an endpoint of
TAILOR_GRADER_MODEL_ENDPOINTS open to the tenant: called as it is) or else one of the tenant's
own: the (default) base model, or an adapter version (`name`, `name@vN`) of it, loaded on the
worker's engine under an internal name while the block runs. A name that is neither - another tenant's
adapter, a model that does not exist - fails the job before any training. A whole-model
version (a full fine-tune) cannot grade: it would need an engine of its own for the whole run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from core.errors import TailorError
from core.states import VersionKind
from trainer import hyperparameters, rewards
from trainer.compute.engine import EngineClient
from trainer.graders import ExternalModels, GradingContext
from trainer.jobs import JobInfo
from trainer.reward_models import GraderModels, grading_context

if TYPE_CHECKING:
    from trainer.worker.loop import Worker


def _refused(name: str, why: str) -> TailorError:
    message = f"The grader's model {name!r} {why}."
    return TailorError(400, message, code="invalid_grader", param=f"{rewards.PARAM}.model")


@contextlib.contextmanager
def grader_models(
    w: Worker, job: JobInfo, *, training: bool = False, sampling: bool = False
) -> Iterator[tuple[GraderModels, EngineClient | None]]:
    """(the job's grader models, the engine the tenant's ones answer on; None when it names none
    and `sampling` is False). `training`: for the training run, when a worker's own engine gives
    a GPU back to training. `sampling`: the run samples its answers on the engine too
    (trainer.worker.sampling), which it reaches the same way."""
    grader = (job.config or {}).get("grader")
    names = rewards.model_names(grader) if job.method == hyperparameters.REINFORCEMENT and grader else set()
    external = ExternalModels.from_settings(w.settings, job.tenant_id)
    own = sorted(n for n in names if not external.handles(n))
    if not own and not sampling:
        yield GraderModels(job.tenant_id), None
        return
    if own and training and not w.engines.keep_own_engine and not w.settings.eval_engine_url:
        raise _refused(
            own[0],
            "is one of yours, which answer on the worker's engine; this worker trains on its GPU without one "
            "during training (the operator sets TAILOR_EVAL_ENGINE_URL for that). Name one of the operator's "
            "grader models instead",
        )
    engine = w.engines.client()
    served: dict[str, str] = {}
    load = {}
    for i, name in enumerate(own):
        try:
            version = w.version_of(job.tenant_id, name)
        except TailorError:
            raise _refused(name, "is neither one of your models nor a grader model this server offers") from None
        if version is None and w.settings.base(name) != w.settings.bases[0]:
            raise _refused(name, "is another base model; graders' models answer on the default base's engine")
        if version is None:
            served[name] = engine.served_model
        elif version.kind == VersionKind.MODEL:
            raise _refused(name, "is a whole model (a full fine-tune); graders may name the base model or an adapter")
        elif not w.settings.recorded_base(version.base_model).default:
            raise _refused(
                name, "is an adapter of another base model; graders' models answer on the default base's engine"
            )
        else:
            served[name] = f"tailor-grader-{job.id}-{i}"
            load[served[name]] = w.store.local_path(version.digest)
    if own:
        w.event(job, f"Grader models on the worker's engine: {', '.join(own)}")
    with engine.adapters(load):
        yield GraderModels(job.tenant_id, engine.url, served), engine


@contextlib.contextmanager
def grading(w: Worker, job: JobInfo) -> Iterator[GradingContext]:
    """The context the job's grader runs in within the worker (its evaluation)."""
    with grader_models(w, job) as (models, engine):
        yield grading_context(w.settings, models, engine)
