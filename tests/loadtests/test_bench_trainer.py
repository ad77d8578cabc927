"""loadtests.bench_trainer: its arithmetic, and the speed run end to end on a tiny random model."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests import bench_trainer
from trainer.compute import synthetic


def test_flops_and_peaks() -> None:
    # 6N per token for full training, 4N for LoRA, plus the attention term 12 * L * H * T
    assert bench_trainer.flops_per_token(1_000, 2, 8, 16, full=True) == 6_000 + 12 * 2 * 8 * 16
    assert bench_trainer.flops_per_token(1_000, 2, 8, 16, full=False) == 4_000 + 12 * 2 * 8 * 16
    assert bench_trainer.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_trainer.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench_trainer.peak_tflops("Some CPU") is None


def test_synthetic_model_sizes(tmp_path: Path) -> None:
    model_dir = synthetic.build(tmp_path / "tiny", "tiny")
    params, layers, hidden = bench_trainer.model_stats(model_dir)
    from transformers import AutoModelForCausalLM

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    # the formula counts the weight matrices; the norms' few parameters are left out
    assert (layers, hidden) == (2, 64) and 0.95 * real <= params <= real
    rows = bench_trainer.synthetic_rows(3, 64)
    assert len(rows) == 3 and [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]  # type: ignore[index]


def test_speed_run_on_a_tiny_model(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--device", "cpu", "--model-config", "tiny", "--steps", "2", "--seq-len", "32", "--batch-size", "2"]
    assert bench_trainer.main(argv) == 0
    table = capsys.readouterr().out.split("| run |")[1]
    assert "| lora | 2 |" in table and "| full | 2 |" in table
