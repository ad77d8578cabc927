"""The evaluation report of a training job: one JSON file and one PNG chart.

    from trainer.report import write_report
    json_path, png_path = write_report(Path("data/jobs/job_123"), job_id="job_123",
                                       losses=result.losses, comparison=cmp, decision=decision)

`report.json` holds everything a UI or an audit needs: the decision and its reasons,
both models' metrics and their deltas, the loss curve, and per-example outputs (at most
MAX_EXAMPLES, those where the two models answered differently first, since those are
what a reviewer wants to read). Non-finite numbers are written as null so the file is
strict JSON.

`report.png` has the training loss on the left and baseline-vs-candidate bars on the
right: exact match, token F1 and judge win rate on a shared 0..1 axis, perplexity on
its own axis (it is unbounded and lower is better, so it would squash the others).
Both files are written to a temp name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
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


def report_dict(*, job_id: str, losses: list[float], comparison: Comparison, decision: Decision) -> dict[str, Any]:
    examples = comparison.examples
    return _finite(
        {
            "job_id": job_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "decision": {"promote": decision.promote, "reasons": list(decision.reasons)},
            "metrics": {
                "candidate": asdict(comparison.candidate),
                "baseline": asdict(comparison.baseline),
                "delta": _deltas(comparison),
            },
            "training": {
                "steps": len(losses),
                "losses": [float(x) for x in losses],
                "final_loss": float(losses[-1]) if losses else None,
            },
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
    ax.set_ylim(bottom=0)
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
    ax.set_title(f"Held-out quality (n={c.n}, higher is better)", loc="left", fontsize=11, fontweight="bold")
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


def _plot(path: Path, job_id: str, losses: list[float], comparison: Comparison, decision: Decision) -> None:
    fig = plt.figure(figsize=(13, 4.8), dpi=110, layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=[1.35, 1.35, 0.55])
    _plot_losses(fig.add_subplot(grid[0]), losses)
    _plot_quality(fig.add_subplot(grid[1]), comparison)
    _plot_perplexity(fig.add_subplot(grid[2]), comparison)
    verdict = "PROMOTE" if decision.promote else "HOLD"
    fig.suptitle(
        f"{job_id} - {verdict}",
        fontsize=13,
        fontweight="bold",
        color=PROMOTE_COLOR if decision.promote else HOLD_COLOR,
    )
    if decision.reasons:  # the verdict line says why, in words
        fig.supxlabel(decision.reasons[-1], fontsize=9, color="#444", style="italic")
    for spine_ax in fig.axes:
        spine_ax.spines[["top", "right"]].set_visible(False)
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


def write_report(
    out_dir: Path,
    *,
    job_id: str,
    losses: list[float],
    comparison: Comparison,
    decision: Decision,
) -> tuple[Path, Path]:
    """Write out_dir/report.json and out_dir/report.png (replacing earlier ones)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "report.json", out_dir / "report.png"
    data = report_dict(job_id=job_id, losses=losses, comparison=comparison, decision=decision)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    _replace_into(json_path, lambda p: p.write_text(text, encoding="utf-8"))
    _replace_into(png_path, lambda p: _plot(p, job_id, losses, comparison, decision))
    return json_path, png_path
