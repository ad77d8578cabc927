"""Decide whether an uploaded PEFT LoRA adapter may be served on Tailor's base model.

An adapter reaches the engine only after this module has accepted it: the directory holds
exactly the files a LoRA adapter needs (safetensors, never pickles), its config asks for
nothing the vLLM serving path lacks, its rank fits the engine's `--max-lora-rank`, and
every tensor has the name and shape the base model's projections require. Everything is
checked from file headers, so a 500 MB upload is judged without loading a weight.

Archives (the API takes .zip, .tar and .tar.gz uploads) are unpacked safely by
adapters.archives before the directory they hold is judged here.

Every refusal is a `TailorError` (400) whose message says what is wrong and what is
allowed, so the same words reach the admin API, the CLI and the logs.

One concern read top to bottom (the base model's shapes, the files, the config, the
tensors), which is why it runs somewhat past 450 lines.
"""

from __future__ import annotations

import json
import math
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from adapters.safetensors_file import SafetensorsError, TensorEntry, read_header
from core.errors import TailorError, bad_request

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
README_FILE = "README.md"
ALLOWED_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, README_FILE})
# Only the weights are large; a config or model card past a few KB is padding, and
# highly compressible padding is how a small upload becomes a large stored adapter.
SMALL_FILE_MAX_BYTES: Mapping[str, int] = MappingProxyType({CONFIG_FILE: 64 * 1024, README_FILE: 64 * 1024})

# Which decoder block each projection lives in, as HF Llama/Mistral/Qwen2 name them.
MODULE_BLOCKS: Mapping[str, str] = MappingProxyType(
    {
        "q_proj": "self_attn",
        "k_proj": "self_attn",
        "v_proj": "self_attn",
        "o_proj": "self_attn",
        "gate_proj": "mlp",
        "up_proj": "mlp",
        "down_proj": "mlp",
    }
)

# Formats that unpickle on load and so can run code in the engine process.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
_EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out")

_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})

_TENSOR_KEY = re.compile(
    r"base_model\.model\.model\.layers\.(?P<layer>[0-9]+)\.(?P<block>[A-Za-z0-9_]+)"
    r"\.(?P<module>[A-Za-z0-9_]+)\.lora_(?P<side>[AB])(?P<adapter>\.[A-Za-z0-9_-]+)?\.weight"
)
_EXPECTED_KEY = "base_model.model.model.layers.<i>.<self_attn|mlp>.<module>.lora_<A|B>.weight"

# init_lora_weights values that only seed training; anything else (pissa, olora, loftq,
# corda) rewrites base weights when peft loads the adapter, which vLLM cannot reproduce.
_PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})

ADAPTER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_ADAPTER_NAME = re.compile(ADAPTER_NAME_PATTERN)


# --------------------------------------------------------------------------- base model


@dataclass(frozen=True)
class BaseModelSpec:
    """What an adapter must fit: layer count and each projection's (in, out) features."""

    name: str
    num_layers: int
    module_shapes: Mapping[str, tuple[int, int]] = field(hash=False)

    def __post_init__(self) -> None:
        # Frozen means frozen: callers must not be able to add a module after validation.
        object.__setattr__(self, "module_shapes", MappingProxyType(dict(self.module_shapes)))

    @classmethod
    def from_config_dir(cls, path: Path | str) -> BaseModelSpec:
        """Read a HF `config.json` (Llama, Mistral, Qwen2 and alike)."""
        path = Path(path)
        config = _read_base_config(path / "config.json")
        hidden = _config_int(config, "hidden_size", path)
        intermediate = _config_int(config, "intermediate_size", path)
        heads = _config_int(config, "num_attention_heads", path)
        kv_heads = _config_int(config, "num_key_value_heads", path, default=heads)
        # Mistral writes head_dim: null; that means the classic hidden_size // heads.
        head_dim = _config_int(config, "head_dim", path, default=hidden // heads)
        layers = _config_int(config, "num_hidden_layers", path)
        q_out, kv_out = heads * head_dim, kv_heads * head_dim
        shapes = {
            "q_proj": (hidden, q_out),
            "k_proj": (hidden, kv_out),
            "v_proj": (hidden, kv_out),
            "o_proj": (q_out, hidden),
            "gate_proj": (hidden, intermediate),
            "up_proj": (hidden, intermediate),
            "down_proj": (intermediate, hidden),
        }
        return cls(name=path.resolve().name, num_layers=layers, module_shapes=shapes)


def _read_base_config(config_path: Path) -> dict[str, Any]:
    # A broken base model is the operator's problem, not the uploader's: 500, not 400.
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _base_error(f"base model config {config_path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _base_error(f"base model config {config_path} is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise _base_error(f"base model config {config_path} is not a JSON object")
    # Multimodal wrappers keep the language model's numbers under text_config.
    text_config = config.get("text_config")
    if "hidden_size" not in config and isinstance(text_config, dict):
        return text_config
    return config


def _config_int(config: Mapping[str, Any], key: str, path: Path, default: int | None = None) -> int:
    value = config.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _base_error(f"base model config in {path} needs a positive integer {key}, got {value!r}")
    return value


def _base_error(message: str) -> TailorError:
    return TailorError(500, message, code="base_model_invalid")


# --------------------------------------------------------------------------- adapter dir


@dataclass(frozen=True)
class AdapterManifest:
    """What Tailor learned about an accepted adapter."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model_name_or_path: str | None
    files: tuple[str, ...]
    total_bytes: int


@dataclass(frozen=True)
class _LoraConfig:
    rank: int
    alpha: float
    allowed_ranks: frozenset[int]
    base_model_name_or_path: str | None


def validate_adapter_dir(path: Path | str, *, base: BaseModelSpec, max_rank: int, max_bytes: int) -> AdapterManifest:
    """Accept a PEFT LoRA adapter directory for `base`, or raise a 400 saying why not."""
    path = Path(path)
    sizes = _list_adapter_files(path)
    total = sum(sizes.values())
    if total > max_bytes:
        raise bad_request(
            f"adapter is {total} bytes; the largest accepted adapter is {max_bytes} bytes",
            code="adapter_too_large",
        )
    config = _read_lora_config(path / CONFIG_FILE, base=base, max_rank=max_rank)
    headers = read_safetensors_header(path / WEIGHTS_FILE)
    ranks = _check_tensors(headers, base=base, config=config, max_rank=max_rank)
    return AdapterManifest(
        rank=max([config.rank, *config.allowed_ranks, *ranks.values()]),
        alpha=config.alpha,
        target_modules=tuple(sorted({module for _, module in ranks})),
        base_model_name_or_path=config.base_model_name_or_path,
        files=tuple(sorted(sizes)),
        total_bytes=total,
    )


def _list_adapter_files(path: Path) -> dict[str, int]:
    if path.is_symlink() or not path.is_dir():
        raise bad_request(f"adapter path {path.name!r} is not a directory", code="invalid_adapter")
    sizes: dict[str, int] = {}
    for entry in sorted(path.iterdir()):
        info = entry.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise _invalid(f"adapter contains a symlink ({entry.name}); only regular files are allowed")
        if stat.S_ISDIR(info.st_mode):
            raise _invalid(
                f"adapter contains a folder ({entry.name}); put {CONFIG_FILE} and "
                f"{WEIGHTS_FILE} directly in the adapter's top level"
            )
        if not stat.S_ISREG(info.st_mode):
            raise _invalid(f"adapter contains {entry.name}, which is not a regular file")
        if entry.name not in ALLOWED_FILES:
            raise _invalid(_unexpected_file_message(entry.name))
        check_small_file(entry.name, info.st_size)
        sizes[entry.name] = info.st_size
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in sizes:
            raise _invalid(
                f"adapter is missing {required}; a PEFT LoRA adapter saved with "
                f"save_pretrained() has {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
    return sizes


def check_small_file(name: str, size: int) -> None:
    """A config or model card past its cap is refused (adapters.archives asks it from an
    archive member's declared size, before writing a byte)."""
    limit = SMALL_FILE_MAX_BYTES.get(name)
    if limit is not None and size > limit:
        raise bad_request(
            f"{name} is {size} bytes; the largest accepted {name} is {limit} bytes",
            code="adapter_file_too_large",
        )


def _unexpected_file_message(name: str) -> str:
    if name.lower().endswith(_PICKLE_SUFFIXES):
        return (
            f"adapter contains {name}: safetensors only. Pickle-based weights can run code "
            f"when loaded; save the adapter with safe_serialization=True to get {WEIGHTS_FILE}"
        )
    return f"adapter contains unexpected file {name}; allowed files are {', '.join(sorted(ALLOWED_FILES))}"


def _read_lora_config(config_path: Path, *, base: BaseModelSpec, max_rank: int) -> _LoraConfig:
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise _invalid(f"{CONFIG_FILE} must be a JSON object")
    if config.get("peft_type") != "LORA":
        raise _invalid(
            f"{CONFIG_FILE} has peft_type {config.get('peft_type')!r}; only LoRA adapters "
            f'(peft_type "LORA") are supported'
        )
    rank = config.get("r")
    if not _is_int(rank) or rank < 1:
        raise _invalid(f"{CONFIG_FILE} needs an integer rank r >= 1, got {rank!r}")
    _check_rank(rank, max_rank)
    alpha = config.get("lora_alpha")
    if not _is_number(alpha) or alpha <= 0:
        raise _invalid(f"{CONFIG_FILE} needs a positive number lora_alpha, got {alpha!r}")
    pattern_ranks = _rank_pattern(config.get("rank_pattern"), max_rank)
    _check_alpha_pattern(config.get("alpha_pattern"))
    _check_target_modules(config.get("target_modules"), base)
    _refuse_unsupported_features(config)
    base_name = config.get("base_model_name_or_path")
    return _LoraConfig(
        rank=rank,
        alpha=float(alpha),
        allowed_ranks=frozenset({rank, *pattern_ranks}),
        base_model_name_or_path=base_name if isinstance(base_name, str) else None,
    )


def _rank_pattern(value: Any, max_rank: int) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise _invalid(f"{CONFIG_FILE} rank_pattern must be an object of module pattern -> rank")
    ranks = []
    for key, rank in value.items():
        if not _is_int(rank) or rank < 1:
            raise _invalid(f"{CONFIG_FILE} rank_pattern[{key!r}] must be an integer >= 1, got {rank!r}")
        _check_rank(rank, max_rank)
        ranks.append(rank)
    return ranks


def _check_alpha_pattern(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(_is_number(a) for a in value.values()):
        raise _invalid(f"{CONFIG_FILE} alpha_pattern must be an object of module pattern -> number")


def _check_target_modules(value: Any, base: BaseModelSpec) -> None:
    # A string is a regex peft matched at training time; the tensors say what it matched.
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise _invalid(f"{CONFIG_FILE} target_modules must be a non-empty list of module names")
    for module in value:
        suffix = module.rsplit(".", 1)[-1]
        if suffix in _EMBEDDING_MODULES:
            raise _invalid(_embedding_message(module))
        if suffix not in base.module_shapes:
            raise _invalid(
                f"target module {module!r} is not a projection of base model {base.name}; "
                f"allowed: {', '.join(base.module_shapes)}"
            )


def _refuse_unsupported_features(config: Mapping[str, Any]) -> None:
    # Each of these loads in peft but would be silently wrong (or fail) on vLLM.
    modules_to_save = config.get("modules_to_save")
    if modules_to_save:
        raise _invalid(
            f"modules_to_save ({modules_to_save}) is not supported: the engine serves LoRA on "
            f"the attention and MLP projections only, not fully trained embeddings or heads"
        )
    if config.get("trainable_token_indices"):
        raise _invalid(_embedding_message("trainable_token_indices"))
    if config.get("use_dora"):
        raise _invalid("DoRA adapters (use_dora: true) are not supported; train a plain LoRA")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise _invalid('LoRA bias terms are not supported; train with bias="none"')
    for key, what in (
        ("layer_replication", "layer_replication"),
        ("alora_invocation_tokens", "Activated LoRA (alora_invocation_tokens)"),
        ("use_qalora", "QALoRA (use_qalora)"),
    ):
        if config.get(key):
            raise _invalid(f"{what} is not supported by the serving engine")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        raise _invalid(
            f"init_lora_weights={init!r} rewrites base model weights when loaded, which the "
            f"engine cannot do; convert the adapter to a plain LoRA first"
        )


def _check_rank(rank: int, max_rank: int) -> None:
    if rank > max_rank:
        raise bad_request(f"rank {rank} exceeds the engine's maximum {max_rank}", code="adapter_rank_too_high")


def _embedding_message(what: str) -> str:
    return (
        f"{what}: LoRA on embeddings or the LM head is not supported by the serving engine; "
        f"target only {', '.join(MODULE_BLOCKS)}"
    )


# --------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Tensor names, dtypes and shapes of the adapter's safetensors file, from its header only."""
    try:
        return read_header(path).tensors
    except SafetensorsError as exc:
        raise _corrupt(str(exc)) from None


def _corrupt(why: str) -> TailorError:
    return bad_request(f"{WEIGHTS_FILE} is corrupt: {why}", code="invalid_adapter")


# --------------------------------------------------------------------------- tensors


def _check_tensors(
    headers: Mapping[str, TensorEntry], *, base: BaseModelSpec, config: _LoraConfig, max_rank: int
) -> dict[tuple[int, str], int]:
    """Check every tensor against the base; return the rank of each (layer, module)."""
    if not headers:
        raise _invalid(f"{WEIGHTS_FILE} holds no tensors")
    a_ranks: dict[tuple[int, str], int] = {}
    b_ranks: dict[tuple[int, str], tuple[str, int]] = {}
    for key in sorted(headers):
        layer, module, side = _parse_tensor_key(key, base)
        tensor = headers[key]
        in_features, out_features = base.module_shapes[module]
        if tensor.dtype not in _FLOAT_DTYPES:
            raise _invalid(f"tensor {key} has dtype {tensor.dtype}; LoRA weights must be F16, BF16, F32 or F64")
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
    if "lora_embedding" in lowered or any(f".{m}." in key for m in _EMBEDDING_MODULES):
        raise _invalid(_embedding_message(f"tensor {key}"))
    if "lora_magnitude_vector" in key:
        raise _invalid(f"tensor {key} is a DoRA magnitude; DoRA adapters are not supported")
    match = _TENSOR_KEY.fullmatch(key)
    if match is None:
        raise _mismatch(key, base, f"a name like {_EXPECTED_KEY}")
    if match["adapter"]:
        # vLLM reads `...lora_A.weight` only; peft's save_pretrained drops the adapter name.
        raise _invalid(
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
    config: _LoraConfig,
    max_rank: int,
) -> None:
    for slot, (b_key, b_rank) in sorted(b_ranks.items()):
        if slot not in a_ranks:
            raise _invalid(f"tensor {b_key} has no matching lora_A tensor")
        if b_rank != a_ranks[slot]:
            raise _mismatch(b_key, base, f"rank {a_ranks[slot]} like its lora_A", f"rank {b_rank}")
    for slot, rank in sorted(a_ranks.items()):
        if slot not in b_ranks:
            layer, module = slot
            raise _invalid(f"lora_A of layer {layer} {module} has no matching lora_B tensor")
        _check_rank(rank, max_rank)
        if rank not in config.allowed_ranks:
            # vLLM scales by the declared rank; a tensor of another rank would be mis-scaled.
            layer, module = slot
            declared = ", ".join(str(r) for r in sorted(config.allowed_ranks))
            raise _invalid(
                f"layer {layer} {module} has rank {rank}, but {CONFIG_FILE} declares only "
                f"rank(s) {declared} (r and rank_pattern)"
            )


def _mismatch(key: str, base: BaseModelSpec, expected: str, got: str | None = None) -> TailorError:
    message = f"tensor {key} does not match base model {base.name}: expected {expected}"
    return _invalid(message + (f", got {got}" if got else ""))


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _invalid(message: str) -> TailorError:
    return bad_request(message, code="invalid_adapter")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- names


def validate_adapter_name(name: str) -> str:
    """Return `name` if it is a valid adapter name; it is never rewritten."""
    allowed = (
        "use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, "
        f"at most 63 characters ({ADAPTER_NAME_PATTERN})"
    )
    if not isinstance(name, str) or not name:
        raise bad_request(f"adapter name must not be empty; {allowed}", code="invalid_adapter_name", param="name")
    if ":" in name or "/" in name:
        raise bad_request(
            f"adapter name {name!r} contains ':' or '/', reserved in model ids; {allowed}",
            code="invalid_adapter_name",
            param="name",
        )
    if name != name.lower():
        raise bad_request(
            f"adapter name {name!r} has uppercase letters; names are lowercase (e.g. {name.lower()!r}); {allowed}",
            code="invalid_adapter_name",
            param="name",
        )
    if not _ADAPTER_NAME.fullmatch(name):
        raise bad_request(
            f"adapter name {name!r} is invalid; {allowed}",
            code="invalid_adapter_name",
            param="name",
        )
    return name
