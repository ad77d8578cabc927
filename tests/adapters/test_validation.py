"""Tests for adapters.validation: what a LoRA adapter must look like to be accepted.

Everything runs on a tiny Llama shape written to tmp_path; the real base model is never
needed. Adapters are built with safetensors directly, and once with peft itself, since
that is what users upload.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapters.archives import extract_archive
from adapters.validation import BaseModelSpec, validate_adapter_dir, validate_adapter_name
from core.errors import TailorError

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, LAYERS = 16, 32, 4, 2, 2
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
    config: dict[str, object] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": LAYERS,
        "vocab_size": 64,
    }
    config.update(overrides)
    return config


@pytest.fixture
def base(tmp_path: Path) -> BaseModelSpec:
    model_dir = tmp_path / "tiny-llama"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(tiny_config()))
    return BaseModelSpec.from_config_dir(model_dir)


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


# --------------------------------------------------------------------------- base model


def test_base_spec_reads_shapes_from_config(base: BaseModelSpec) -> None:
    assert base.name == "tiny-llama"
    assert base.num_layers == LAYERS
    assert dict(base.module_shapes) == {m: (i, o) for m, (_, i, o) in SHAPES.items()}


def test_base_spec_respects_explicit_head_dim_and_null(tmp_path: Path) -> None:
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    (explicit / "config.json").write_text(json.dumps(tiny_config(head_dim=8)))
    spec = BaseModelSpec.from_config_dir(explicit)
    assert spec.module_shapes["q_proj"] == (HIDDEN, HEADS * 8)
    assert spec.module_shapes["k_proj"] == (HIDDEN, KV_HEADS * 8)
    assert spec.module_shapes["o_proj"] == (HEADS * 8, HIDDEN)

    null = tmp_path / "null"
    null.mkdir()
    (null / "config.json").write_text(json.dumps(tiny_config(head_dim=None)))
    assert BaseModelSpec.from_config_dir(null).module_shapes["q_proj"] == (HIDDEN, HIDDEN)


def test_base_spec_missing_config_is_a_server_error(tmp_path: Path) -> None:
    with pytest.raises(TailorError) as info:
        BaseModelSpec.from_config_dir(tmp_path)
    assert info.value.status == 500


def test_base_spec_is_immutable(base: BaseModelSpec) -> None:
    with pytest.raises(TypeError):
        base.module_shapes["lm_head"] = (1, 1)  # type: ignore[index]


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


# --------------------------------------------------------------------------- archives


def _adapter_files(tmp_path: Path) -> dict[str, bytes]:
    adapter = write_adapter(tmp_path / "src-adapter")
    return {p.name: p.read_bytes() for p in adapter.iterdir()}


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name) if name.endswith("/") else name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def add_tar_special(path: Path, info: tarfile.TarInfo, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        tf.addfile(info)
    return path


def refused_archive(archive: Path, dest: Path, max_bytes: int = MAX_BYTES) -> TailorError:
    with pytest.raises(TailorError) as info:
        extract_archive(archive, dest, max_bytes=max_bytes)
    assert info.value.status == 400
    # A refused archive leaves nothing behind.
    assert not dest.exists() or not any(dest.iterdir())
    return info.value


def test_zip_with_top_level_folder(tmp_path: Path, base: BaseModelSpec) -> None:
    files = _adapter_files(tmp_path)
    archive = make_zip(tmp_path / "up.zip", {"support/": b"", **{f"support/{n}": d for n, d in files.items()}})
    root = extract_archive(archive, tmp_path / "out", max_bytes=MAX_BYTES)
    assert root == tmp_path / "out" / "support"
    assert validate(root, base).rank == 4


def test_tar_gz_detected_by_content_with_dot_prefix(tmp_path: Path, base: BaseModelSpec) -> None:
    files = _adapter_files(tmp_path)
    # Misleading name on purpose: the format is sniffed, not guessed from the suffix.
    archive = make_tar(tmp_path / "upload.zip", {f"./my-adapter/{n}": d for n, d in files.items()})
    root = extract_archive(archive, tmp_path / "out", max_bytes=MAX_BYTES)
    assert root == tmp_path / "out" / "my-adapter"
    assert validate(root, base).files == ("adapter_config.json", "adapter_model.safetensors")


def test_plain_tar_with_files_at_top_level(tmp_path: Path, base: BaseModelSpec) -> None:
    archive = make_tar(tmp_path / "up.tar", _adapter_files(tmp_path), mode="w")
    root = extract_archive(archive, tmp_path / "out", max_bytes=MAX_BYTES)
    assert root == tmp_path / "out"
    validate(root, base)


def test_zip_from_finder_ignores_macosx_metadata(tmp_path: Path) -> None:
    files = _adapter_files(tmp_path)
    members = {f"a/{n}": d for n, d in files.items()} | {"__MACOSX/a/._adapter_config.json": b"x"}
    root = extract_archive(make_zip(tmp_path / "up.zip", members), tmp_path / "out", max_bytes=MAX_BYTES)
    assert root == tmp_path / "out" / "a"


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_parent_traversal_is_refused(tmp_path: Path, maker) -> None:
    archive = maker(tmp_path / "evil", {"a/adapter_config.json": b"{}", "a/../../evil.txt": b"x"})
    error = refused_archive(archive, tmp_path / "out")
    assert "'..'" in error.message
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_absolute_path_is_refused(tmp_path: Path, maker) -> None:
    archive = maker(tmp_path / "evil", {"/tmp/evil.txt": b"x"})
    assert "absolute path" in refused_archive(archive, tmp_path / "out").message


def test_tar_symlink_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("a/adapter_config.json")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = add_tar_special(tmp_path / "evil.tar", info)
    assert "symlink" in refused_archive(archive, tmp_path / "out").message


def test_tar_hardlink_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("a/adapter_config.json")
    info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    archive = add_tar_special(tmp_path / "evil.tar", info)
    assert "hard link" in refused_archive(archive, tmp_path / "out").message


@pytest.mark.parametrize(("kind", "words"), [(tarfile.FIFOTYPE, "fifo"), (tarfile.CHRTYPE, "device")])
def test_tar_special_files_are_refused(tmp_path: Path, kind: bytes, words: str) -> None:
    info = tarfile.TarInfo("a/dev")
    info.type = kind
    archive = add_tar_special(tmp_path / "evil.tar", info)
    assert words in refused_archive(archive, tmp_path / "out").message


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("a/adapter_model.safetensors")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    assert "symlink" in refused_archive(archive, tmp_path / "out").message


def test_zip_bomb_is_refused_by_declared_size(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"a/adapter_model.safetensors": b"\0" * 2_000_000})
    assert archive.stat().st_size < 20_000
    error = refused_archive(archive, tmp_path / "out", max_bytes=1_000_000)
    assert "unpacks to more than 1000000 bytes" in error.message


def test_tar_bomb_is_refused_across_members(tmp_path: Path) -> None:
    members = {f"a/part{i}": b"\0" * 400_000 for i in range(5)}
    error = refused_archive(make_tar(tmp_path / "bomb.tgz", members), tmp_path / "out", max_bytes=1_000_000)
    assert "unpacks to more than" in error.message


def test_zip_lying_about_its_size_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "liar.zip", {"a/adapter_model.safetensors": b"\0" * 500_000})
    data = bytearray(archive.read_bytes())
    # Claim 10 bytes in both the local header and the central directory.
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, 10)
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)
    archive.write_bytes(bytes(data))
    refused_archive(archive, tmp_path / "out", max_bytes=1_000)


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


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_archive_with_oversized_readme_is_refused_before_unpacking(tmp_path: Path, maker) -> None:
    # A few hundred KB of gzip can carry hundreds of MB of README; the header says so.
    members = {**_adapter_files(tmp_path), "README.md": b"\0" * 5_000_000}
    archive = maker(tmp_path / "pad.bin", members)
    assert archive.stat().st_size < 200_000
    error = refused_archive(archive, tmp_path / "out")
    assert error.code == "adapter_file_too_large" and "README.md" in error.message


def test_too_many_members(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"a/f{i}": b"x" for i in range(65)})
    assert "more than 64 members" in refused_archive(archive, tmp_path / "out").message


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "dup.tar"
    with tarfile.open(archive, "w") as tf:
        for data in (b"{}", b"{2}"):
            info = tarfile.TarInfo("a/adapter_config.json")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert "twice" in refused_archive(archive, tmp_path / "out").message


def test_two_top_level_folders_are_refused(tmp_path: Path) -> None:
    files = _adapter_files(tmp_path)
    members = {f"a/{n}": d for n, d in files.items()} | {"b/README.md": b"x"}
    error = refused_archive(make_zip(tmp_path / "two.zip", members), tmp_path / "out")
    assert "single top-level folder" in error.message


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_truncated_archive_is_refused(tmp_path: Path, suffix: str) -> None:
    files = {f"a/{n}": d for n, d in _adapter_files(tmp_path).items()}
    maker = make_zip if suffix == ".zip" else make_tar
    archive = maker(tmp_path / f"cut{suffix}", files)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert "corrupt" in refused_archive(archive, tmp_path / "out").message


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    archive.write_bytes(os.urandom(2048))
    assert "unsupported archive format" in refused_archive(archive, tmp_path / "out").message


def test_dest_must_be_empty(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("x")
    archive = make_zip(tmp_path / "a.zip", {"a/adapter_config.json": b"{}"})
    with pytest.raises(ValueError):
        extract_archive(archive, dest, max_bytes=MAX_BYTES)
    assert (dest / "keep").exists()


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["support", "a", "team-1.v2_final", "0day", "x" * 63])
def test_valid_adapter_names(name: str) -> None:
    assert validate_adapter_name(name) == name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("", "must not be empty"),
        ("Support", "'support'"),
        ("acme:support", "':' or '/'"),
        ("acme/support", "':' or '/'"),
        ("-support", "starting with a letter or digit"),
        (".hidden", "starting with a letter or digit"),
        ("has space", "is invalid"),
        ("x" * 64, "at most 63 characters"),
        ("émoji", "is invalid"),
    ],
)
def test_invalid_adapter_names(name: str, expected: str) -> None:
    with pytest.raises(TailorError) as info:
        validate_adapter_name(name)
    assert info.value.status == 400 and info.value.param == "name"
    assert expected in info.value.message
    assert "^[a-z0-9][a-z0-9._-]{0,62}$" in info.value.message
