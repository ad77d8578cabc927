"""The evaluation stage of a job: the candidate against the version it would replace on the
held-out split, generated and scored by vLLM, and the report the job leaves."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.model_validation import is_model_dir
from adapters.registry import VersionInfo
from trainer import datasets, hyperparameters, job_records
from trainer.compute import evaluation
from trainer.compute.engine import EngineClient, model_engine
from trainer.compute.recipe import TrainResult
from trainer.datasets import Snapshot
from trainer.evaluate import Comparison, EvalExample, JudgeConfig
from trainer.gates import Decision
from trainer.jobs import JobInfo
from trainer.report import Report, reward_curve, sampler_of, write_report
from trainer.rewards import reward_for
from trainer.worker.grading import grading

if TYPE_CHECKING:
    from trainer.worker.loop import Worker


def eval_examples(snapshot: Snapshot) -> list[EvalExample]:
    """Held-out prompts with an answer known to be good: corrections and good answers,
    preferred answers, and answers rated good (each prompt and answer once)."""
    found: dict[tuple[str, str], EvalExample] = {}
    pairs = [(r.prompt, r.answer) for r in snapshot.heldout_sft]
    pairs += [(r.prompt, r.chosen) for r in snapshot.heldout_preferences]
    pairs += [(r.prompt, r.completion) for r in snapshot.heldout_ratings if r.label]
    for prompt, answer in pairs:
        key = (datasets.prompt_key(prompt), datasets.normalise_text(answer))
        found.setdefault(key, EvalExample(messages=[dict(m) for m in prompt], reference=answer))
    return list(found.values())


def metrics_dict(value: Any) -> dict[str, Any]:
    """Metrics as stored and shown (a dataclass or a mapping)."""
    raw = asdict(value) if is_dataclass(value) and not isinstance(value, type) else dict(value)
    # An infinite perplexity is not JSON (PostgreSQL's json type and the HTTP responses
    # refuse it): stored and shown as null, "not measurable".
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in raw.items()}


@contextlib.contextmanager
def whole_models(
    w: Worker, job: JobInfo, candidate_dir: Path, baseline_dir: Path | None
) -> Iterator[dict[str, EngineClient]]:
    """An engine of its own for each side that is a whole model (a full fine-tune's result, a
    model version), started for the evaluation and stopped after it: {role: its engine}."""
    with contextlib.ExitStack() as stack:
        own: dict[str, EngineClient] = {}
        for role, path in (("candidate", candidate_dir), ("baseline", baseline_dir)):
            if path is not None and is_model_dir(path):
                w.event(job, f"Starting an engine for the {role}, a whole model")
                own[role] = stack.enter_context(model_engine(w.settings, path, f"tailor-eval-{job.id}-{role}"))
        yield own


def _judge(w: Worker) -> JudgeConfig | None:
    s = w.settings
    if not s.judge_base_url or not s.judge_model:
        return None  # no judge: evaluated on exact match, token F1 and perplexity only
    key = s.judge_api_key.get_secret_value() if s.judge_api_key else ""
    return JudgeConfig(base_url=s.judge_base_url, api_key=key, model=s.judge_model, max_pairs=s.judge_max_pairs)


def _against(baseline: VersionInfo | None) -> str:
    return f"{baseline.adapter_name} version {baseline.version}" if baseline else "the base model"


def evaluate(
    w: Worker, job: JobInfo, snapshot: Snapshot, candidate_dir: Path, baseline: VersionInfo | None
) -> Comparison:
    """The candidate against `baseline` (None: the base model) on the snapshot's held-out split."""
    if job.method == hyperparameters.REINFORCEMENT:
        return _evaluate_graded(w, job, snapshot, candidate_dir, baseline)
    examples = eval_examples(snapshot)
    w.event(job, f"Evaluating against {_against(baseline)} on {len(examples)} held-out example(s)")
    started = time.monotonic()
    baseline_dir = w.store.local_path(baseline.digest) if baseline else None
    base = w.base_of(job)
    with whole_models(w, job, candidate_dir, baseline_dir) as own:
        comparison, plan = evaluation.evaluate(
            w.engines.client(base),
            w.tokenizer(base),
            examples,
            candidate_dir=candidate_dir,
            baseline_dir=baseline_dir,
            tag=job.id,
            max_model_len=w.settings.engine_max_model_len,
            judge=_judge(w),
            own_engines=own,
        )
    c, b = comparison.candidate, comparison.baseline
    w.event(
        job,
        f"Evaluation: token F1 {c.token_f1:.3f} vs {b.token_f1:.3f}, "
        f"exact match {c.exact_match:.3f} vs {b.exact_match:.3f} "
        f"(answers up to {plan.max_tokens} tokens, {time.monotonic() - started:.0f} s)",
        data={"candidate": metrics_dict(c), "baseline": metrics_dict(b), "max_tokens": plan.max_tokens},
    )
    return comparison


def _evaluate_graded(
    w: Worker, job: JobInfo, snapshot: Snapshot, candidate_dir: Path, baseline: VersionInfo | None
) -> Comparison:
    """A reinforcement job: the grader's mean score on the held-out prompts, candidate vs baseline."""
    prompts = snapshot.heldout_prompts
    w.event(job, f"Grading against {_against(baseline)} on {len(prompts)} held-out prompt(s)")
    baseline_dir = w.store.local_path(baseline.digest) if baseline else None
    with whole_models(w, job, candidate_dir, baseline_dir) as own, grading(w, job) as context:
        comparison, failed = evaluation.evaluate_graded(
            w.engines.client(),
            prompts,
            reward_for((job.config or {})["grader"], context),
            candidate_dir=candidate_dir,
            baseline_dir=baseline_dir,
            tag=job.id,
            max_tokens=int(job.hyperparameters.get("max_completion_length") or 0)
            or hyperparameters.DEFAULT_MAX_COMPLETION_LENGTH,
            own_engines=own,
        )
    c, b = comparison.candidate, comparison.baseline
    w.event(
        job,
        f"Evaluation: mean grader score {c.grader_score:.3f} vs {b.grader_score:.3f}"
        + (f" ({failed} grade(s) failed and scored 0)" if failed else ""),
        data={"candidate": metrics_dict(c), "baseline": metrics_dict(b), "failed_grades": failed},
    )
    return comparison


def store_report(
    w: Worker,
    job: JobInfo,
    result: TrainResult,
    comparison: Comparison,
    decision: Decision,
    selection: Mapping[str, Any] | None = None,
) -> str:
    """Write the job's report (JSON and training curves; a selection job's table of candidates)
    to the blob store; its JSON's key."""
    prefix = f"reports/{job.tenant_id}/{job.id}"
    steps = job_records.step_data(w.db, job.id)
    rewards = reward_curve(steps)  # a reinforcement run's; none for the others
    with tempfile.TemporaryDirectory(prefix="tailor-report-") as tmp:
        report = Report(
            job.id,
            list(result.losses),
            comparison,
            decision,
            rewards=rewards,
            sampler=sampler_of(steps),
            selection=selection,
        )
        json_path, png_path = write_report(Path(tmp), report)
        w.blobs.put_bytes(f"{prefix}/loss.png", Path(png_path).read_bytes())
        # The JSON last: its presence says the report is complete.
        w.blobs.put_bytes(f"{prefix}/report.json", Path(json_path).read_bytes())
    return f"{prefix}/report.json"
