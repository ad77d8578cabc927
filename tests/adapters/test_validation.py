"""Tests for adapters.validation: what a LoRA adapter must look like to be accepted.

Everything runs on a tiny Llama shape written to tmp_path; the real base model is never
needed. Adapters are built with safetensors directly, and once with peft itself, since
that is what users upload.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapters.validation import BaseModelSpec, validate_adapter_dir
from core.errors import TailorError
from tests.tiny_llama import HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS, TINY_CONFIG

HEAD_DIM = HIDDEN // HEADS
SHAPES = {  # module: (block, in_features, out_features)
    "q_proj": ("self_attn", HIDDEN, HEADS * HEAD_DIM),
    "k_proj": ("self_attn", HIDDEN, KV_HEADS * HEAD_DIM),
    "v_proj": ("self_attn", HIDDEN, KV_HEADS * HEAD_DIM),
    "o_proj": ("self_attn", HEADS * HEAD_DIM, HIDDEN),
    "gate_proj": ("mlp", HIDDEN, INTERMEDIATE),
    "up_proj": ("mlp", HIDDEN, INTERMEDIATE),
    "down_proj": ("mlp", INTERMEDIATE, HIDDEN),
}
MAX_RANK, MAX_BYTES = 16, 10_000_000


# --------------------------------------------------------------------------- helpers


def tiny_config(**overrides: object) -> dict[str, object]:
    config = dict(TINY_CONFIG)
    config.update(overrides)
    return config


def tiny_base(tmp_path: Path) -> BaseModelSpec:
    """The tiny Llama's spec, read from a config.json written under `tmp_path`."""
    model_dir = tmp_path / "tiny-llama"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(tiny_config()))
    return BaseModelSpec.from_config_dir(model_dir)


@pytest.fixture
def base(tmp_path: Path) -> BaseModelSpec:
    return tiny_base(tmp_path)


def lora_tensors(
    r: int = 4, modules: tuple[str, ...] = ("q_proj", "v_proj"), layers: int = LAYERS
) -> dict[str, torch.Tensor]:
    tensors = {}
    for layer in range(layers):
        for module in modules:
            block, fan_in, fan_out = SHAPES[module]
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, fan_in)
            tensors[f"{prefix}.lora_B.weight"] = torch.zeros(fan_out, r)
    return tensors


def write_adapter(
    directory: Path,
    *,
    r: int = 4,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    tensors: dict[str, torch.Tensor] | None = None,
    **config_overrides: object,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": list(modules),
        "base_model_name_or_path": "tiny-llama",
        "bias": "none",
        "modules_to_save": None,
        "task_type": "CAUSAL_LM",
    }
    config.update(config_overrides)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    save_file(
        tensors if tensors is not None else lora_tensors(r, modules),
        str(directory / "adapter_model.safetensors"),
    )
    return directory


def validate(path: Path, base: BaseModelSpec, **limits: int):
    return validate_adapter_dir(
        path,
        base=base,
        max_rank=limits.get("max_rank", MAX_RANK),
        max_bytes=limits.get("max_bytes", MAX_BYTES),
    )


def refused(path: Path, base: BaseModelSpec, **limits: int) -> TailorError:
    with pytest.raises(TailorError) as info:
        validate(path, base, **limits)
    assert info.value.status == 400
    return info.value


def tensor_refusal(tmp_path: Path, base: BaseModelSpec, tensors: dict[str, torch.Tensor]) -> str:
    return refused(write_adapter(tmp_path / "a", tensors=tensors), base).message


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("rank_pattern", [None, {"v_proj": 8}])
def test_real_peft_adapter_is_accepted(tmp_path: Path, rank_pattern: dict | None) -> None:
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**tiny_config())
    base_dir = tmp_path / "tiny-llama"
    config.save_pretrained(base_dir)
    model = transformers.LlamaForCausalLM(config)
    lora = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(SHAPES),
        rank_pattern=rank_pattern or {},
        task_type="CAUSAL_LM",
    )
    adapter_dir = tmp_path / "adapter"
    peft.get_peft_model(model, lora).save_pretrained(adapter_dir)

    manifest = validate(adapter_dir, BaseModelSpec.from_config_dir(base_dir))

    assert manifest.rank == (8 if rank_pattern else 4)
    assert manifest.alpha == 8.0
    assert manifest.target_modules == tuple(sorted(SHAPES))
    assert "adapter_config.json" in manifest.files
    assert "adapter_model.safetensors" in manifest.files
    assert set(manifest.files) <= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert manifest.total_bytes == sum(os.path.getsize(adapter_dir / f) for f in manifest.files)


def test_handmade_adapter_manifest(tmp_path: Path, base: BaseModelSpec) -> None:
    adapter = write_adapter(tmp_path / "a", r=8, modules=("v_proj", "q_proj", "down_proj"))
    (adapter / "README.md").write_text("# support bot\n")
    manifest = validate(adapter, base)
    assert manifest.rank == 8
    assert manifest.alpha == 16.0
    assert manifest.target_modules == ("down_proj", "q_proj", "v_proj")
    assert manifest.base_model_name_or_path == "tiny-llama"
    assert manifest.files == ("README.md", "adapter_config.json", "adapter_model.safetensors")


def test_half_precision_adapter_is_accepted(tmp_path: Path, base: BaseModelSpec) -> None:
    tensors = {k: v.to(torch.bfloat16) for k, v in lora_tensors().items()}
    assert validate(write_adapter(tmp_path / "a", tensors=tensors), base).rank == 4


# --------------------------------------------------------------------------- refused: files


def test_rank_above_engine_maximum(tmp_path: Path, base: BaseModelSpec) -> None:
    error = refused(write_adapter(tmp_path / "a", r=32), base)
    assert "rank 32 exceeds the engine's maximum 16" in error.message


def test_rank_pattern_above_engine_maximum(tmp_path: Path, base: BaseModelSpec) -> None:
    error = refused(write_adapter(tmp_path / "a", rank_pattern={"q_proj": 64}), base)
    assert "rank 64 exceeds the engine's maximum 16" in error.message


def test_tensor_rank_above_engine_maximum(tmp_path: Path, base: BaseModelSpec) -> None:
    adapter = write_adapter(tmp_path / "a", r=4, tensors=lora_tensors(r=32))
    assert "rank 32 exceeds the engine's maximum 16" in refused(adapter, base).message


def test_tensor_rank_must_match_config(tmp_path: Path, base: BaseModelSpec) -> None:
    adapter = write_adapter(tmp_path / "a", r=4, tensors=lora_tensors(r=8))
    assert "has rank 8" in refused(adapter, base).message


@pytest.mark.parametrize("name", ["adapter_model.bin", "model.pt", "weights.pth", "state.pkl"])
def test_pickle_files_are_refused(tmp_path: Path, base: BaseModelSpec, name: str) -> None:
    adapter = write_adapter(tmp_path / "a")
    (adapter / name).write_bytes(b"\x80\x04K\x01.")
    error = refused(adapter, base)
    assert "safetensors only" in error.message and name in error.message


def test_unexpected_file_is_refused(tmp_path: Path, base: BaseModelSpec) -> None:
    adapter = write_adapter(tmp_path / "a")
    (adapter / "notes.txt").write_text("hi")
    error = refused(adapter, base)
    assert "notes.txt" in error.message and "README.md" in error.message


def test_subdirectory_is_refused(tmp_path: Path, base: BaseModelSpec) -> None:
    adapter = write_adapter(tmp_path / "a")
    (adapter / "checkpoint-10").mkdir()
    assert "folder" in refused(adapter, base).message


def test_symlink_is_refused(tmp_path: Path, base: BaseModelSpec) -> None:
    adapter = write_adapter(tmp_path / "a")
    (tmp_path / "secret").write_text("x")
    (adapter / "README.md").symlink_to(tmp_path / "secret")
    assert "symlink" in refused(adapter, base).message


@pytest.mark.parametrize("missing", ["adapter_config.json", "adapter_model.safetensors"])
def test_missing_required_file(tmp_path: Path, base: BaseModelSpec, missing: str) -> None:
    adapter = write_adapter(tmp_path / "a")
    (adapter / missing).unlink()
    assert f"missing {missing}" in refused(adapter, base).message


def test_not_a_directory(tmp_path: Path, base: BaseModelSpec) -> None:
    assert "not a directory" in refused(tmp_path / "nope", base).message


def test_over_max_bytes(tmp_path: Path, base: BaseModelSpec) -> None:
    error = refused(write_adapter(tmp_path / "a"), base, max_bytes=100)
    assert "largest accepted adapter is 100 bytes" in error.message


@pytest.mark.parametrize("name", ["README.md", "adapter_config.json"])
def test_oversized_small_file_is_refused(tmp_path: Path, base: BaseModelSpec, name: str) -> None:
    target = write_adapter(tmp_path / "a") / name
    data = target.read_bytes() if target.exists() else b"#"
    target.write_bytes(data + b" " * (64 * 1024 + 1 - len(data)))  # still valid JSON
    adapter = target.parent
    error = refused(adapter, base)
    assert error.code == "adapter_file_too_large"
    assert f"{name} is 65537 bytes; the largest accepted {name} is 65536 bytes" in error.message


def test_small_files_at_their_limit_are_accepted(tmp_path: Path, base: BaseModelSpec) -> None:
    adapter = write_adapter(tmp_path / "a")
    (adapter / "README.md").write_bytes(b"#" * 64 * 1024)
    assert "README.md" in validate(adapter, base).files


# --------------------------------------------------------------------------- refused: config


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"peft_type": "IA3", "r": 4}), "only LoRA adapters"),
        (json.dumps({"peft_type": "LORA", "r": 0, "lora_alpha": 8}), "r >= 1"),
        (json.dumps({"peft_type": "LORA", "r": "4", "lora_alpha": 8}), "r >= 1"),
        (json.dumps({"peft_type": "LORA", "r": 4}), "lora_alpha"),
        (
            json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": []}),
            "target_modules",
        ),
    ],
)
def test_bad_config(tmp_path: Path, base: BaseModelSpec, config_text: str, expected: str) -> None:
    adapter = write_adapter(tmp_path / "a")
    (adapter / "adapter_config.json").write_text(config_text)
    assert expected in refused(adapter, base).message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "embeddings or the LM head"),
        ({"target_modules": ["q_proj", "rotary_emb"]}, "not a projection of base model tiny-llama"),
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "bias"),
        ({"init_lora_weights": "pissa"}, "pissa"),
        ({"layer_replication": [[0, 1]]}, "layer_replication"),
    ],
)
def test_unsupported_config_features(tmp_path: Path, base: BaseModelSpec, overrides: dict, expected: str) -> None:
    assert expected in refused(write_adapter(tmp_path / "a", **overrides), base).message


def test_regex_target_modules_is_accepted(tmp_path: Path, base: BaseModelSpec) -> None:
    adapter = write_adapter(tmp_path / "a", target_modules=r".*\.(q_proj|v_proj)")
    assert validate(adapter, base).target_modules == ("q_proj", "v_proj")


# --------------------------------------------------------------------------- refused: tensors


def test_wrong_shape(tmp_path: Path, base: BaseModelSpec) -> None:
    tensors = lora_tensors()
    tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 17)
    message = tensor_refusal(tmp_path, base, tensors)
    assert message == (
        "tensor base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight does not match "
        "base model tiny-llama: expected shape (r, 16), got shape (4, 17)"
    )


Q1 = "base_model.model.model.layers.1.self_attn.q_proj"
V0 = "base_model.model.model.layers.0.self_attn.v_proj"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({f"{V0}.lora_B.weight": (16, 4)}, "expected shape (8, r), got shape (16, 4)", id="lora_b_shape"),
        pytest.param({f"{V0}.lora_B.weight": (8, 2)}, "rank 4 like its lora_A, got rank 2", id="ranks_of_a_and_b"),
        pytest.param(
            {"base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight": (4, 16)},
            "does not match base model tiny-llama: expected one of the modules q_proj, k_proj, v_proj, o_proj, "
            "gate_proj, up_proj, down_proj, got 'qkv_proj'",
            id="unknown_module",
        ),
        pytest.param(
            {
                "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight": (4, 16),
                "base_model.model.model.layers.0.mlp.q_proj.lora_B.weight": (16, 4),
            },
            "q_proj inside self_attn",
            id="module_in_wrong_block",
        ),
        pytest.param(
            {"transformer.h.0.attn.c_attn.lora_A.weight": (4, 16)},
            "expected a name like base_model.model.model.layers.<i>",
            id="unrecognised_name",
        ),
        pytest.param({f"{Q1}.lora_B.weight": None}, "no matching lora_B", id="lora_a_without_b"),
        pytest.param({f"{Q1}.lora_A.weight": None}, "no matching lora_A", id="lora_b_without_a"),
        pytest.param(
            {"base_model.model.model.embed_tokens.lora_embedding_A": (4, 64)},
            "embeddings or the LM head",
            id="embedding",
        ),
        pytest.param({"base_model.model.lm_head.lora_A.weight": (4, 64)}, "embeddings or the LM head", id="lm_head"),
    ],
)
def test_a_tensor_that_does_not_fit_is_refused(
    tmp_path: Path, base: BaseModelSpec, changes: dict[str, tuple[int, int] | None], expected: str
) -> None:
    """The tensors of a valid adapter with some replaced by zeros of a shape (None: removed)."""
    tensors = lora_tensors()
    for key, shape in changes.items():
        if shape is None:
            del tensors[key]
        else:
            tensors[key] = torch.zeros(*shape)
    assert expected in tensor_refusal(tmp_path, base, tensors)


def test_layer_out_of_range(tmp_path: Path, base: BaseModelSpec) -> None:
    error = refused(write_adapter(tmp_path / "a", tensors=lora_tensors(layers=LAYERS + 1)), base)
    assert f"layer index below {LAYERS}, got layer {LAYERS}" in error.message


def test_adapter_name_segment_is_refused(tmp_path: Path, base: BaseModelSpec) -> None:
    tensors = {k.replace(".weight", ".default.weight"): v for k, v in lora_tensors().items()}
    assert "adapter name 'default'" in tensor_refusal(tmp_path, base, tensors)


def test_integer_tensors_are_refused(tmp_path: Path, base: BaseModelSpec) -> None:
    tensors = {k: v.to(torch.int8) for k, v in lora_tensors().items()}
    assert "must be F16, BF16, F32 or F64" in tensor_refusal(tmp_path, base, tensors)


def test_empty_safetensors(tmp_path: Path, base: BaseModelSpec) -> None:
    assert "no tensors" in refused(write_adapter(tmp_path / "a", tensors={}), base).message


def _truncate(data: bytes) -> bytes:
    return data[:-10]


def _huge_header(data: bytes) -> bytes:
    return struct.pack("<Q", 10**12) + data[8:]


def _bad_json(data: bytes) -> bytes:
    length = struct.unpack("<Q", data[:8])[0]
    return data[:8] + b"\xff" * length + data[8 + length :]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_truncate, "truncated"),
        (lambda d: d[:5], "shorter than a safetensors header"),
        (lambda d: b"", "shorter than a safetensors header"),
        (_huge_header, "truncated or not safetensors"),
        (_bad_json, "not valid JSON"),
        (lambda d: d + b"\x00" * 16, "trailing bytes"),
        (lambda d: os.urandom(len(d)), "corrupt"),
    ],
)
def test_corrupt_safetensors(tmp_path: Path, base: BaseModelSpec, damage, expected: str) -> None:
    adapter = write_adapter(tmp_path / "a")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    error = refused(adapter, base)
    assert "adapter_model.safetensors is corrupt" in error.message
    assert expected in error.message
