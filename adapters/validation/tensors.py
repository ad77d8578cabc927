"""Every tensor of the weights file: a LoRA A or B of a base projection, in a float dtype,
with the projection's shape, paired with its other half at a declared rank."""

from __future__ import annotations

import re
from collections.abc import Mapping

from adapters.safetensors_file import TensorEntry
from core.errors import TailorError

from .base_model import MODULE_BLOCKS, BaseModelSpec
from .files import CONFIG_FILE, WEIGHTS_FILE
from .lora_config import LoraConfig
from .refusals import EMBEDDING_MODULES, check_rank, embedding_message, invalid

_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})

_TENSOR_KEY = re.compile(
    r"base_model\.model\.model\.layers\.(?P<layer>[0-9]+)\.(?P<block>[A-Za-z0-9_]+)"
    r"\.(?P<module>[A-Za-z0-9_]+)\.lora_(?P<side>[AB])(?P<adapter>\.[A-Za-z0-9_-]+)?\.weight"
)
_EXPECTED_KEY = "base_model.model.model.layers.<i>.<self_attn|mlp>.<module>.lora_<A|B>.weight"


def check_tensors(
    headers: Mapping[str, TensorEntry], *, base: BaseModelSpec, config: LoraConfig, max_rank: int
) -> dict[tuple[int, str], int]:
    """Check every tensor against the base; return the rank of each (layer, module)."""
    if not headers:
        raise invalid(f"{WEIGHTS_FILE} holds no tensors")
    a_ranks: dict[tuple[int, str], int] = {}
    b_ranks: dict[tuple[int, str], tuple[str, int]] = {}
    for key in sorted(headers):
        layer, module, side = _parse_tensor_key(key, base)
        tensor = headers[key]
        in_features, out_features = base.module_shapes[module]
        if tensor.dtype not in _FLOAT_DTYPES:
            raise invalid(f"tensor {key} has dtype {tensor.dtype}; LoRA weights must be F16, BF16, F32 or F64")
        if side == "A":
            # lora_A maps the module's input down to r: (r, in_features).
            _expect_shape(key, base, tensor.shape, fixed_axis=1, size=in_features)
            a_ranks[(layer, module)] = tensor.shape[0]
        else:
            # lora_B maps r back up to the module's output: (out_features, r).
            _expect_shape(key, base, tensor.shape, fixed_axis=0, size=out_features)
            b_ranks[(layer, module)] = (key, tensor.shape[1])
    _check_pairs(a_ranks, b_ranks, base=base, config=config, max_rank=max_rank)
    return a_ranks


def _parse_tensor_key(key: str, base: BaseModelSpec) -> tuple[int, str, str]:
    lowered = key.lower()
    if "lora_embedding" in lowered or any(f".{m}." in key for m in EMBEDDING_MODULES):
        raise invalid(embedding_message(f"tensor {key}"))
    if "lora_magnitude_vector" in key:
        raise invalid(f"tensor {key} is a DoRA magnitude; DoRA adapters are not supported")
    match = _TENSOR_KEY.fullmatch(key)
    if match is None:
        raise _mismatch(key, base, f"a name like {_EXPECTED_KEY}")
    if match["adapter"]:
        # vLLM reads `...lora_A.weight` only; peft's save_pretrained drops the adapter name.
        raise invalid(
            f"tensor {key} carries the adapter name {match['adapter'][1:]!r}; save the adapter "
            f"with peft's save_pretrained(), which writes names like {_EXPECTED_KEY}"
        )
    layer, block, module = int(match["layer"]), match["block"], match["module"]
    if layer >= base.num_layers:
        raise _mismatch(key, base, f"a layer index below {base.num_layers}", f"layer {layer}")
    if module not in base.module_shapes:
        raise _mismatch(key, base, f"one of the modules {', '.join(base.module_shapes)}", f"{module!r}")
    if MODULE_BLOCKS.get(module, block) != block:
        raise _mismatch(key, base, f"{module} inside {MODULE_BLOCKS[module]}", f"{module} inside {block}")
    return layer, module, match["side"]


def _expect_shape(key: str, base: BaseModelSpec, shape: tuple[int, ...], *, fixed_axis: int, size: int) -> None:
    if len(shape) != 2 or shape[fixed_axis] != size or min(shape) < 1:
        expected = f"(r, {size})" if fixed_axis == 1 else f"({size}, r)"
        raise _mismatch(key, base, f"shape {expected}", f"shape {_fmt_shape(shape)}")


def _check_pairs(
    a_ranks: Mapping[tuple[int, str], int],
    b_ranks: Mapping[tuple[int, str], tuple[str, int]],
    *,
    base: BaseModelSpec,
    config: LoraConfig,
    max_rank: int,
) -> None:
    for slot, (b_key, b_rank) in sorted(b_ranks.items()):
        if slot not in a_ranks:
            raise invalid(f"tensor {b_key} has no matching lora_A tensor")
        if b_rank != a_ranks[slot]:
            raise _mismatch(b_key, base, f"rank {a_ranks[slot]} like its lora_A", f"rank {b_rank}")
    for slot, rank in sorted(a_ranks.items()):
        if slot not in b_ranks:
            layer, module = slot
            raise invalid(f"lora_A of layer {layer} {module} has no matching lora_B tensor")
        check_rank(rank, max_rank)
        if rank not in config.allowed_ranks:
            # vLLM scales by the declared rank; a tensor of another rank would be mis-scaled.
            layer, module = slot
            declared = ", ".join(str(r) for r in sorted(config.allowed_ranks))
            raise invalid(
                f"layer {layer} {module} has rank {rank}, but {CONFIG_FILE} declares only "
                f"rank(s) {declared} (r and rank_pattern)"
            )


def _mismatch(key: str, base: BaseModelSpec, expected: str, got: str | None = None) -> TailorError:
    message = f"tensor {key} does not match base model {base.name}: expected {expected}"
    return invalid(message + (f", got {got}" if got else ""))


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
