"""Small random PEFT LoRA adapters for load: built once per cache directory, registered by path.

Every adapter differs (`init_lora_weights=False`, its own seed), so the engine does real
per-adapter work; what they answer does not matter to the benchmarks that use them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtests.launcher import progress

# (rank, target modules) cycled over the adapters: small, but not all alike.
ADAPTER_SHAPES = (
    (8, ("q_proj", "v_proj")),
    (4, ("q_proj", "k_proj", "v_proj", "o_proj")),
    (8, ("gate_proj", "up_proj", "down_proj")),
    (4, ("q_proj", "v_proj", "down_proj")),
)
# One shape for benchmarks whose adapters should all cost the same: rank 8 on attention.
UNIFORM_RANK = 8
UNIFORM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# Random LoRA B matrices at nn.Linear's default init move the base model a lot; scale them
# down so adapted models still write text (the engine's work does not depend on it).
LORA_B_SCALE = 0.3


@dataclass(frozen=True)
class AdapterSpec:
    rank: int
    targets: tuple[str, ...]
    seed: int

    @property
    def dirname(self) -> str:
        short = "".join(t[0] for t in self.targets)  # q_proj,v_proj -> qv ; gate,up,down -> gud
        return f"r{self.rank}-{short}-s{self.seed}"


def adapter_spec(index: int) -> AdapterSpec:
    rank, targets = ADAPTER_SHAPES[index % len(ADAPTER_SHAPES)]
    return AdapterSpec(rank=rank, targets=targets, seed=1000 + index)


def uniform_specs(count: int, seed_base: int) -> list[AdapterSpec]:
    """`count` adapters of the uniform shape; each benchmark its own seed range, so caches never collide."""
    return [AdapterSpec(rank=UNIFORM_RANK, targets=UNIFORM_TARGETS, seed=seed_base + i) for i in range(count)]


def build_adapters(specs: Sequence[AdapterSpec], cache: Path, model_dir: Path) -> dict[AdapterSpec, Path]:
    """PEFT LoRA directories for `specs`, built once per cache directory."""
    paths = {s: cache / s.dirname for s in specs}
    missing = [s for s in specs if not (paths[s] / "adapter_model.safetensors").exists()]
    if not missing:
        progress(f"adapters: {len(specs)} cached in {cache}")
        return paths
    progress(f"adapters: building {len(missing)} random LoRA adapters in {cache} ...")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for spec in missing:
        torch.manual_seed(spec.seed)
        config = LoraConfig(
            r=spec.rank, lora_alpha=spec.rank, target_modules=list(spec.targets), init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.mul_(LORA_B_SCALE)
        tmp = paths[spec].with_name(paths[spec].name + ".tmp")
        peft_model.save_pretrained(tmp)
        tmp.rename(paths[spec])  # complete or absent: an interrupted build is redone
        model = peft_model.unload()  # the base model again, without LoRA layers
    progress(f"adapters: built in {time.monotonic() - started:.0f} s")
    return paths
