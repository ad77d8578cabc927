"""The evaluation report of a training job: one JSON file and one PNG chart.

    from trainer.report import Report, write_report
    json_path, png_path = write_report(Path("data/jobs/job_123"),
                                       Report("job_123", result.losses, comparison=cmp, decision=decision))

`report.json` holds everything a UI or an audit needs: the decision and its reasons,
both models' metrics and their deltas, the loss curve, and per-example outputs (at most
MAX_EXAMPLES, those where the two models answered differently first, since those are
what a reviewer wants to read). Non-finite numbers are written as null so the file is
strict JSON.

`report.png` has the training loss on the left and baseline-vs-candidate bars on the
right: exact match, token F1 and judge win rate on a shared 0..1 axis, perplexity on
its own axis (it is unbounded and lower is better, so it would squash the others).
A reinforcement job's report adds its reward curve (`rewards`: the step events' mean
grader score over the step's sampled answers, its spread and the KL to the starting
model; in report.json under training.rewards, in the PNG as a panel of its own) and
compares the grader's mean score instead of exact match, F1 and perplexity, which such a
job does not have.
Both files are written to a temp name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from trainer.evaluate import Comparison, ExampleResult  # noqa: E402
from trainer.gates import Decision  # noqa: E402

MAX_EXAMPLES = 50
BASELINE_COLOR = "#9aa5b1"
CANDIDATE_COLOR = "#2f6fdf"
PROMOTE_COLOR = "#1a7f37"
HOLD_COLOR = "#b35900"
KL_COLOR = "#8250df"


@dataclass(frozen=True)
class RewardPoint:
    """One optimizer step of a reinforcement run, as its step event reports it."""

    step: int
    mean_reward: float
    reward_std: float | None = None
    kl: float | None = None


@dataclass(frozen=True)
class Report:
    """What a job's report shows. `rewards`: a reinforcement run's reward curve (reward_curve of
    its step events); `sampler`: where it sampled its answers (sampler_of them); `selection`: a
    selection job's table of candidates (trainer.selection; the metrics and examples are then
    the chosen candidate's)."""

    job_id: str
    losses: list[float]
    comparison: Comparison
    decision: Decision
    rewards: Sequence[RewardPoint] = ()
    sampler: str | None = None
    selection: Mapping[str, Any] | None = None


def reward_curve(step_data: Iterable[Mapping[str, Any] | None]) -> list[RewardPoint]:
    """The reward curve from a job's event data, in step order: the events that carry a step
    and a mean_reward (other methods' step events and prose events carry none). A step
    reported twice (a paused run that re-ran it) keeps its last report."""
    points: dict[int, RewardPoint] = {}
    for data in step_data:
        if not data or data.get("step") is None or data.get("mean_reward") is None:
            continue
        std, kl = data.get("reward_std"), data.get("kl")
        points[int(data["step"])] = RewardPoint(
            step=int(data["step"]),
            mean_reward=float(data["mean_reward"]),
            reward_std=None if std is None else float(std),
            kl=None if kl is None else float(kl),
        )
    return [points[step] for step in sorted(points)]


def _finite(value: Any) -> Any:
    """NaN/inf -> None, recursively: json.dumps would write invalid JSON for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _deltas(comparison: Comparison) -> dict[str, float | None]:
    c, b = comparison.candidate, comparison.baseline
    out: dict[str, float | None] = {
        "exact_match": c.exact_match - b.exact_match,
        "token_f1": c.token_f1 - b.token_f1,
        "perplexity_ratio": c.perplexity / b.perplexity if b.perplexity else None,
    }
    if c.win_rate is not None:
        out["win_rate_vs_even"] = c.win_rate - 0.5
    return out


def _pick_examples(examples: list[ExampleResult]) -> list[dict[str, Any]]:
    """Up to MAX_EXAMPLES, changed answers first, each keeping its index in the eval set."""
    indexed = list(enumerate(examples))
    changed = [(i, e) for i, e in indexed if e.candidate_output != e.baseline_output]
    same = [(i, e) for i, e in indexed if e.candidate_output == e.baseline_output]
    return [
        {"index": i, "changed": e.candidate_output != e.baseline_output, **asdict(e)}
        for i, e in (changed + same)[:MAX_EXAMPLES]
    ]


def sampler_of(step_data: Iterable[Mapping[str, Any] | None]) -> str | None:
    """Where a reinforcement run sampled its answers, as its last step event says (None: no such run)."""
    samplers = [data["sampler"] for data in step_data if data and data.get("sampler")]
    return str(samplers[-1]) if samplers else None


def _training(losses: list[float], rewards: Sequence[RewardPoint], sampler: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "steps": len(losses),
        "losses": [float(x) for x in losses],
        "final_loss": float(losses[-1]) if losses else None,
    }
    if rewards:
        out["rewards"] = [asdict(p) for p in rewards]
        out["final_mean_reward"] = rewards[-1].mean_reward
    if sampler:
        out["sampler"] = sampler
    return out


def report_dict(report: Report) -> dict[str, Any]:
    """report.json's content."""
    comparison, decision, examples = report.comparison, report.decision, report.comparison.examples
    return _finite(
        {
            **({"model_selection": dict(report.selection)} if report.selection is not None else {}),
            "job_id": report.job_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "decision": {"promote": decision.promote, "reasons": list(decision.reasons)},
            "metrics": {
                "candidate": asdict(comparison.candidate),
                "baseline": asdict(comparison.baseline),
                "delta": _deltas(comparison),
            },
            "training": _training(report.losses, report.rewards, report.sampler),
            "examples_total": len(examples),
            "examples_changed": sum(e.candidate_output != e.baseline_output for e in examples),
            "examples": _pick_examples(examples),
        }
    )


# -----------------------------------------------------------------------------
# the chart


def _plot_losses(ax: Any, losses: list[float]) -> None:
    ax.set_title("Training loss", loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if not losses:
        ax.text(0.5, 0.5, "no training steps", ha="center", va="center", transform=ax.transAxes)
        return
    steps = list(range(1, len(losses) + 1))
    ax.plot(
        steps,
        losses,
        color=CANDIDATE_COLOR,
        alpha=0.35 if len(losses) > 20 else 0.9,
        marker="o" if len(losses) <= 40 else None,
        markersize=3,
        linewidth=1.2,
        label="per step",
    )
    if len(losses) > 20:
        # a trailing mean shows the trend through per-batch noise
        w = max(2, len(losses) // 10)
        smooth = [sum(losses[max(0, i - w + 1) : i + 1]) / (i + 1 - max(0, i - w + 1)) for i in range(len(losses))]
        ax.plot(steps, smooth, color=CANDIDATE_COLOR, linewidth=2, label=f"trailing mean ({w} steps)")
        ax.legend(frameon=False, fontsize=8)
    ax.annotate(
        f"{losses[-1]:.3f}",
        (steps[-1], losses[-1]),
        textcoords="offset points",
        xytext=(0, 6),
        ha="center",
        fontsize=8,
    )
    ax.set_ylim(bottom=min(0.0, min(losses)))  # GRPO's loss goes below 0
    ax.set_xlim(0, len(losses) + max(1.0, 0.03 * len(losses)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.grid(alpha=0.25)


def _bar_labels(ax: Any, bars: Any, fmt: str) -> None:
    for bar in bars:
        h = bar.get_height()
        if math.isfinite(h):
            ax.annotate(
                fmt.format(h),
                (bar.get_x() + bar.get_width() / 2, h),
                textcoords="offset points",
                xytext=(0, 2),
                ha="center",
                fontsize=8,
            )


def _plot_quality(ax: Any, comparison: Comparison) -> None:
    c, b = comparison.candidate, comparison.baseline
    names = ["exact match", "token F1"]
    base_vals = [b.exact_match, b.token_f1]
    cand_vals = [c.exact_match, c.token_f1]
    if _graded(comparison):  # no reference answers: the grader's score is the only measure
        names, base_vals, cand_vals = ["grader score"], [b.grader_score or 0.0], [c.grader_score or 0.0]
    if c.win_rate is not None and b.win_rate is not None:
        names.append("judge win rate")
        base_vals.append(b.win_rate)
        cand_vals.append(c.win_rate)
    x = range(len(names))
    width = 0.38
    _bar_labels(
        ax,
        ax.bar([i - width / 2 for i in x], base_vals, width, label="baseline", color=BASELINE_COLOR),
        "{:.2f}",
    )
    _bar_labels(
        ax,
        ax.bar([i + width / 2 for i in x], cand_vals, width, label="candidate", color=CANDIDATE_COLOR),
        "{:.2f}",
    )
    if c.win_rate is not None:
        ax.axhline(0.5, color="#555", linewidth=0.8, linestyle=":")
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.12)
    title = f"Held-out score (n={c.n})" if _graded(comparison) else f"Held-out quality (n={c.n}, higher is better)"
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.legend(frameon=False, fontsize=8, loc="upper left", ncols=2)
    ax.grid(axis="y", alpha=0.25)


def _plot_perplexity(ax: Any, comparison: Comparison) -> None:
    vals = [comparison.baseline.perplexity, comparison.candidate.perplexity]
    shown = [v if math.isfinite(v) else 0.0 for v in vals]
    bars = ax.bar(["baseline", "candidate"], shown, 0.6, color=[BASELINE_COLOR, CANDIDATE_COLOR])
    for bar, v in zip(bars, vals, strict=True):
        if math.isfinite(v):
            _bar_labels(ax, [bar], "{:.3g}")
        else:  # no bar to draw: say so rather than show a 0
            ax.annotate(
                "n/a",
                (bar.get_x() + bar.get_width() / 2, 0),
                textcoords="offset points",
                xytext=(0, 2),
                ha="center",
                fontsize=8,
                color="#b00020",
            )
    top = max(shown) if max(shown) > 0 else 1.0
    ax.set_ylim(0, top * 1.2)
    ax.set_title("Perplexity\n(lower is better)", loc="left", fontsize=11, fontweight="bold")
    if all(math.isfinite(v) and v > 0 for v in vals):
        ax.set_xlabel(f"change {vals[1] / vals[0] - 1:+.0%}")
    ax.grid(axis="y", alpha=0.25)


def _graded(comparison: Comparison) -> bool:
    return comparison.candidate.grader_score is not None


def _plot_rewards(ax: Any, rewards: Sequence[RewardPoint]) -> None:
    """Mean grader score per step with its spread over the step's answers; KL on its own axis."""
    ax.set_title("Reward (mean grader score)", loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    steps = [p.step for p in rewards]
    means = [p.mean_reward for p in rewards]
    spread = [p.reward_std or 0.0 for p in rewards]
    ax.fill_between(
        steps,
        [max(0.0, m - s) for m, s in zip(means, spread, strict=True)],
        [min(1.0, m + s) for m, s in zip(means, spread, strict=True)],
        color=CANDIDATE_COLOR,
        alpha=0.15,
        linewidth=0,
        label="± std over the step's answers",
    )
    ax.plot(steps, means, color=CANDIDATE_COLOR, marker="o" if len(steps) <= 40 else None, markersize=3, label="mean")
    ax.annotate(f"{means[-1]:.2f}", (steps[-1], means[-1]), textcoords="offset points", xytext=(0, 6), ha="center")
    # Rewards are grader scores, within 0..1 for every grader Tailor runs.
    ax.set_ylim(0, 1.05)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    kl = [(p.step, p.kl) for p in rewards if p.kl is not None]
    if kl:
        twin = ax.twinx()
        twin.plot([s for s, _ in kl], [k for _, k in kl], color=KL_COLOR, linestyle="--", linewidth=1, label="KL")
        twin.set_ylabel("KL to the starting model", color=KL_COLOR)
        twin.set_ylim(bottom=0)
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, frameon=False, fontsize=8, loc="upper left")


def _plot(path: Path, report: Report) -> None:
    losses, comparison, decision, rewards = report.losses, report.comparison, report.decision, report.rewards
    panels: list[tuple[float, Any]] = [(1.35, lambda ax: _plot_losses(ax, losses))]
    if rewards:
        panels.append((1.35, lambda ax: _plot_rewards(ax, rewards)))
    panels.append((1.35 if not _graded(comparison) else 1.0, lambda ax: _plot_quality(ax, comparison)))
    if not _graded(comparison):  # a graded evaluation has no perplexity
        panels.append((0.55, lambda ax: _plot_perplexity(ax, comparison)))
    widths = [w for w, _ in panels]
    fig = plt.figure(figsize=(4.0 * sum(widths), 4.8), dpi=110, layout="constrained")
    grid = fig.add_gridspec(1, len(panels), width_ratios=widths)
    axes = [fig.add_subplot(grid[i]) for i in range(len(panels))]
    for ax, (_, draw) in zip(axes, panels, strict=True):
        draw(ax)
    verdict = "PROMOTE" if decision.promote else "HOLD"
    fig.suptitle(
        f"{report.job_id} - {verdict}",
        fontsize=13,
        fontweight="bold",
        color=PROMOTE_COLOR if decision.promote else HOLD_COLOR,
    )
    if decision.reasons:  # the verdict line says why, in words
        fig.supxlabel(decision.reasons[-1], fontsize=9, color="#444", style="italic")
    for spine_ax in fig.axes:
        spine_ax.spines[["top"]].set_visible(False)
    for spine_ax in axes:  # the KL's twin axis keeps its right spine: its scale is there
        spine_ax.spines[["right"]].set_visible(False)
    fig.savefig(path, format="png")
    plt.close(fig)


# -----------------------------------------------------------------------------


def _replace_into(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(out_dir: Path, report: Report) -> tuple[Path, Path]:
    """Write out_dir/report.json and out_dir/report.png (replacing earlier ones)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "report.json", out_dir / "report.png"
    text = json.dumps(report_dict(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    _replace_into(json_path, lambda p: p.write_text(text, encoding="utf-8"))
    _replace_into(png_path, lambda p: _plot(p, report))
    return json_path, png_path
