"""Where a training run computes: device, precision and the number of processes.

`TAILOR_TRAINER_DEVICES` says it once for a worker:

    auto          every visible CUDA GPU (one process each), else the CPU   (default)
    cpu           the CPU, one process
    cpu:N         the CPU, N processes (DDP over gloo; what CI uses to test the distributed path)
    cuda          every visible CUDA GPU
    cuda:0,2      these GPUs (by index), one process each

Precision follows the device: bf16 on GPUs that support it, fp16 with loss scaling on older
ones, float32 on the CPU (bf16 matmuls on CPUs are slow and numerically fragile). The base
model's weights are loaded in that precision (an 8B model is 16 GB in bf16, not 32 in
float32); LoRA matrices stay float32 (peft keeps adapters in float32 by default) and the
trainer autocasts. Gradient checkpointing is on for GPUs (activation memory is what limits
batch size there) and off on the CPU (it costs a second forward pass and RAM is plenty).

Several processes split the data (each takes its share of every batch) and either each hold
the whole model (DDP: gradients are averaged) or shards of it (FSDP2, `fully_shard`: each
process keeps 1/N of the weights, gradients and optimizer state and gathers a layer's
weights just before using it). `TAILOR_TRAINER_SHARDING` chooses:

    auto   FSDP for full-parameter runs (weights, gradients and AdamW states: 16 bytes per
           parameter, 128 GB for an 8B model, more than one card), DDP for LoRA (the frozen
           base is all that is replicated, and a LoRA's gradients are tiny to average)  (default)
    ddp    always DDP
    fsdp   always FSDP, e.g. a LoRA on a base model too large for one card

FSDP runs on the CPU too (gloo), so CI tests the sharded path as well.

QLoRA (`quantization: "4bit"`) holds the frozen base in NF4 through bitsandbytes, which
runs on CUDA only: `check_quantization` refuses it anywhere else before a model is loaded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from typing import Literal

from core.errors import bad_request
from trainer.hyperparameters import NO_QUANTIZATION

Device = Literal["cpu", "cuda"]
Precision = Literal["fp32", "bf16", "fp16"]
Sharding = Literal["auto", "ddp", "fsdp"]
SHARDINGS: tuple[Sharding, ...] = ("auto", "ddp", "fsdp")


@dataclass(frozen=True)
class Placement:
    device: Device
    processes: int
    precision: Precision
    gradient_checkpointing: bool
    gpus: tuple[int, ...] = ()  # CUDA device indices, one per process
    sharding: Sharding = "auto"

    @property
    def distributed(self) -> bool:
        return self.processes > 1

    def shards(self, *, full_parameters: bool) -> bool:
        """Whether a run here shards the model (FSDP) rather than replicating it (DDP)."""
        if not self.distributed or self.sharding == "ddp":
            return False
        return self.sharding == "fsdp" or full_parameters

    def describe(self) -> str:
        where = "CPU" if self.device == "cpu" else "GPU " + ",".join(str(g) for g in self.gpus)
        return f"{where}, {self.processes} process(es), {self.precision}"


def _cuda() -> tuple[int, bool]:
    """(visible CUDA devices, whether they do bf16); (0, False) without CUDA."""
    import torch  # the placement is only ever chosen in the worker, which has torch

    if not torch.cuda.is_available():
        return 0, False
    return torch.cuda.device_count(), bool(torch.cuda.is_bf16_supported())


def parse_devices(spec: str, *, visible_gpus: int, bf16: bool, sharding: str = "auto") -> Placement:
    """The placement `spec` (see the module docstring) asks for on a host with `visible_gpus`."""
    if sharding not in SHARDINGS:
        raise bad_request(f"TAILOR_TRAINER_SHARDING={sharding!r}: expected one of {', '.join(SHARDINGS)}")
    return replace(_devices(spec, visible_gpus=visible_gpus, bf16=bf16), sharding=sharding)  # type: ignore[arg-type]


def _devices(spec: str, *, visible_gpus: int, bf16: bool) -> Placement:
    spec = spec.strip().lower() or "auto"
    kind, _, rest = spec.partition(":")
    if kind == "auto":
        kind = "cuda" if visible_gpus else "cpu"
    if kind == "cpu":
        processes = 1
        if rest:
            if not rest.isdigit() or not 1 <= int(rest) <= 64:
                raise bad_request(f"TAILOR_TRAINER_DEVICES={spec!r}: cpu:N needs 1 <= N <= 64")
            processes = int(rest)
        return Placement("cpu", processes, "fp32", gradient_checkpointing=False)
    if kind != "cuda":
        raise bad_request(f"TAILOR_TRAINER_DEVICES={spec!r}: expected auto, cpu, cpu:N, cuda or cuda:I,J,...")
    if not visible_gpus:
        raise bad_request(f"TAILOR_TRAINER_DEVICES={spec!r} but no CUDA device is visible to the trainer")
    if rest:
        try:
            gpus = tuple(int(part) for part in rest.split(","))
        except ValueError:
            raise bad_request(f"TAILOR_TRAINER_DEVICES={spec!r}: GPU indices must be integers") from None
        if any(not 0 <= g < visible_gpus for g in gpus) or len(set(gpus)) != len(gpus):
            raise bad_request(f"TAILOR_TRAINER_DEVICES={spec!r}: indices must be distinct and below {visible_gpus}")
    else:
        gpus = tuple(range(visible_gpus))
    return Placement("cuda", len(gpus), "bf16" if bf16 else "fp16", gradient_checkpointing=True, gpus=gpus)


def choose(spec: str, sharding: str = "auto") -> Placement:
    """The placement for this host."""
    visible, bf16 = _cuda()
    return parse_devices(spec, visible_gpus=visible, bf16=bf16, sharding=sharding)


def check_quantization(quantization: str, placement: Placement, *, full_parameters: bool = False) -> None:
    """Refuse a quantized run that cannot work on `placement` (a 400), before any model is loaded."""
    if quantization == NO_QUANTIZATION:
        return
    param = "hyperparameters.quantization"
    if placement.device != "cuda":
        raise bad_request(
            f'quantization "{quantization}" (QLoRA) needs a CUDA GPU, and this trainer runs on the CPU '
            '(TAILOR_TRAINER_DEVICES); leave quantization at "auto" or "none" to train in full precision',
            code="qlora_needs_cuda",
            param=param,
        )
    if full_parameters:
        raise bad_request(
            "a quantized base model cannot be trained itself; QLoRA trains a LoRA on top of it",
            code="qlora_needs_lora",
            param=param,
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise bad_request(
            f'quantization "{quantization}" (QLoRA) needs the bitsandbytes package, which is not installed '
            "next to this trainer",
            code="qlora_needs_bitsandbytes",
            param=param,
        )
