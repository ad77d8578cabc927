"""trainer.compute.placement (TAILOR_TRAINER_DEVICES) and launch.start_command.

Pure functions of the spec and of how many GPUs are visible: no GPU is needed to test them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core.errors import TailorError
from trainer.compute import placement as placement_module
from trainer.compute.launch import start_command
from trainer.compute.placement import Placement, choose, parse_devices


def cpu(processes: int = 1) -> Placement:
    return Placement("cpu", processes, "fp32", gradient_checkpointing=False)


def gpus(*indices: int, precision: str = "bf16") -> Placement:
    return Placement("cuda", len(indices), precision, gradient_checkpointing=True, gpus=indices)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "visible", "bf16", "expected"),
    [
        # no GPU visible
        ("auto", 0, False, cpu()),
        ("", 0, False, cpu()),  # unset means auto
        ("cpu", 0, False, cpu()),
        ("cpu:1", 0, False, cpu()),
        ("cpu:2", 0, False, cpu(2)),
        ("  CPU:4 ", 0, False, cpu(4)),  # case and spaces do not matter
        # GPUs visible: auto takes them all; the CPU is still there when asked for
        ("auto", 2, True, gpus(0, 1)),
        ("cpu", 2, True, cpu()),
        ("cpu:3", 4, True, cpu(3)),
        ("cuda", 1, True, gpus(0)),
        ("cuda", 4, True, gpus(0, 1, 2, 3)),
        ("cuda:1", 2, True, gpus(1)),
        ("cuda:0,2", 4, True, gpus(0, 2)),
        ("cuda:2,0", 4, True, gpus(2, 0)),  # in the order given
        # GPUs without bf16 (V100, T4): fp16 with loss scaling
        ("auto", 2, False, gpus(0, 1, precision="fp16")),
        ("cuda:0", 1, False, gpus(0, precision="fp16")),
    ],
)
def test_parse_devices(spec: str, visible: int, bf16: bool, expected: Placement) -> None:
    assert parse_devices(spec, visible_gpus=visible, bf16=bf16) == expected


def test_precision_and_checkpointing_follow_the_device() -> None:
    on_cpu = parse_devices("cpu:2", visible_gpus=8, bf16=True)
    # float32 on the CPU; recomputing activations costs a second forward there and RAM is plenty
    assert (on_cpu.precision, on_cpu.gradient_checkpointing, on_cpu.gpus) == ("fp32", False, ())
    on_gpu = parse_devices("cuda", visible_gpus=2, bf16=True)
    assert (on_gpu.precision, on_gpu.gradient_checkpointing) == ("bf16", True)
    assert on_gpu.distributed and not cpu().distributed and cpu(2).distributed
    assert on_gpu.describe() == "GPU 0,1, 2 process(es), bf16"
    assert cpu(2).describe() == "CPU, 2 process(es), fp32"


@pytest.mark.parametrize(
    ("devices", "sharding", "full", "shards"),
    [
        ("cuda", "auto", True, True),  # a full model's weights, gradients and Adam states: shard them
        ("cuda", "auto", False, False),  # a LoRA: replicate the frozen base, average tiny gradients
        ("cuda", "fsdp", False, True),  # a LoRA on a base too big for one card
        ("cuda", "ddp", True, False),
        ("cuda:1", "fsdp", True, False),  # one process: nothing to shard over
        ("cpu:2", "auto", True, True),
        ("cpu", "auto", True, False),
    ],
)
def test_sharding_follows_the_setting_and_the_run(devices: str, sharding: str, full: bool, shards: bool) -> None:
    assert parse_devices(devices, visible_gpus=2, bf16=True, sharding=sharding).shards(full_parameters=full) is shards


def test_an_unknown_sharding_is_refused() -> None:
    with pytest.raises(TailorError, match="TAILOR_TRAINER_SHARDING"):
        parse_devices("cuda", visible_gpus=2, bf16=True, sharding="zero3")


@pytest.mark.parametrize(
    ("spec", "visible"),
    [
        ("tpu", 0),
        ("gpu", 2),
        ("cpu:0", 0),
        ("cpu:65", 0),
        ("cpu:-1", 0),
        ("cpu:two", 0),
        ("cpu:1.5", 0),
        ("cuda", 0),  # nothing visible
        ("cuda:0", 0),
        ("cuda:2", 2),  # out of range
        ("cuda:-1", 2),
        ("cuda:0,0", 2),  # twice
        ("cuda:a,b", 2),
        ("cuda:0,", 2),
    ],
)
def test_bad_specs_are_bad_requests(spec: str, visible: int) -> None:
    with pytest.raises(TailorError) as info:
        parse_devices(spec, visible_gpus=visible, bf16=True)
    assert info.value.status == 400
    assert "TAILOR_TRAINER_DEVICES" in info.value.message


def test_choose_asks_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement_module, "_cuda", lambda: (0, False))
    assert choose("auto") == cpu()
    monkeypatch.setattr(placement_module, "_cuda", lambda: (2, True))
    assert choose("auto") == gpus(0, 1)


# --- the command line that runs a recipe -----------------------------------------------


def test_one_process_is_a_plain_python() -> None:
    recipe = Path("/w/recipe.json")
    entry = ["-m", "trainer.compute.launch", str(recipe)]
    assert start_command(recipe, cpu()) == [sys.executable, *entry]
    assert start_command(recipe, gpus(3)) == [sys.executable, *entry]  # one GPU: no launcher either


def test_cpu_processes_run_under_torch_distributed() -> None:
    cmd = start_command(Path("/w/recipe.json"), cpu(3))
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd
    assert cmd[cmd.index("--nproc_per_node") + 1] == "3"
    assert cmd[-3:] == ["-m", "trainer.compute.launch", "/w/recipe.json"]


def test_gpus_run_under_accelerate_multi_gpu() -> None:
    cmd = start_command(Path("/w/recipe.json"), gpus(0, 2))
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("--gpu_ids") + 1] == "0,2"
    assert cmd[cmd.index("--num_machines") + 1] == "1"
    assert cmd[-3:] == ["-m", "trainer.compute.launch", "/w/recipe.json"]
