"""Full-model versions: what a checkpoint directory or archive must hold, and how it registers
beside adapters under one name (same versions, aliases, promotion and rollback)."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapters import promotion, registry
from adapters.model_validation import validate_model_dir
from core.errors import TailorError
from core.states import VersionKind
from tests.adapters.test_promotion import BASE, add, env, register  # noqa: F401  (env is a fixture)
from tests.adapters.test_validation import tiny_config


def write_model(directory: Path, *, layers: int = 2, seed: int = 0) -> Path:
    """A tiny complete checkpoint: config, safetensors weights, tokenizer files."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(tiny_config(num_hidden_layers=layers)))
    torch.manual_seed(seed)
    tensors = {"model.embed_tokens.weight": torch.randn(64, 32)}
    tensors |= {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8, 32) for i in range(layers)}
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    (directory / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (directory / "generation_config.json").write_text("{}")
    return directory


def reason(path: Path, **kwargs: int) -> TailorError:
    with pytest.raises(TailorError) as info:
        validate_model_dir(path, max_bytes=kwargs.get("max_bytes", 10_000_000))
    assert info.value.status == 400
    return info.value


def test_a_complete_checkpoint_is_accepted(tmp_path: Path) -> None:
    manifest = validate_model_dir(write_model(tmp_path / "m"), max_bytes=10_000_000)
    assert manifest.architecture == "LlamaForCausalLM" and manifest.num_layers == 2
    assert "model.safetensors" in manifest.files and manifest.total_bytes > 8000


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "training_args.pkl"])
def test_pickles_are_refused(tmp_path: Path, name: str) -> None:
    model = write_model(tmp_path / "m")
    (model / name).write_bytes(b"\x80\x04")
    error = reason(model)
    assert error.code == "invalid_model" and "safetensors only" in error.message


def test_code_is_refused(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    (model / "modeling_evil.py").write_text("import os")
    assert "trust_remote_code" in reason(model).message
    (model / "modeling_evil.py").unlink()
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    assert "auto_map" in reason(model).message


def test_weights_must_be_whole_and_listed(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:-10])
    assert "model.safetensors is corrupt" in reason(model).message
    (model / "model.safetensors").unlink()
    assert "weights" in reason(model).message
    (model / "model-00001-of-00002.safetensors").write_bytes(data)
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    assert "model-00002-of-00002.safetensors" in reason(model).message


def test_a_tokenizer_and_a_decoder_config_are_required(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    (model / "tokenizer.json").unlink()
    assert "no tokenizer" in reason(model).message
    model = write_model(tmp_path / "n")
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    assert "architectures" in reason(model).message


def test_folders_links_and_size(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    assert reason(model, max_bytes=1000).code == "model_too_large"
    os.symlink("/etc/passwd", model / "README.md")
    assert "symlink" in reason(model).message
    (model / "README.md").unlink()
    (model / "sub").mkdir()
    assert "folder" in reason(model).message


def _tar(source: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(source, arcname=source.name)
    return out


def test_a_model_registers_beside_adapters_and_takes_turns_serving_the_name(env) -> None:  # noqa: F811
    db, store, limits, acme, other, tmp = env
    adapter = add(env, "support", 4)
    archive = _tar(write_model(tmp / "student"), tmp / "student.tar.gz")
    model = registry.register_archive(
        db,
        store,
        limits,
        tenant_id=acme,
        name="support",
        archive=archive,
        base_model_name=BASE,
        max_upload_bytes=1_000_000,
        activate=False,
        actor="test",
    )
    assert model.kind == VersionKind.MODEL and model.version == adapter.version + 1 and model.rank == 0
    assert store.exists(model.digest) and "config.json" in {f.name for f in store.manifest(model.digest).files}
    assert registry.resolve(db, acme, "support", BASE).kind == VersionKind.ADAPTER
    pinned = registry.resolve(db, acme, f"support@v{model.version}", BASE)
    assert pinned.kind == VersionKind.MODEL and pinned.digest == model.digest

    promotion.promote(db, acme, "support", model.version, actor="test", by="test")
    assert registry.resolve(db, acme, "support", BASE).kind == VersionKind.MODEL
    kinds = {v.version: v.kind for v in promotion.lineage(db, acme, "support")}
    assert kinds == {adapter.version: VersionKind.ADAPTER, model.version: VersionKind.MODEL}
    promotion.rollback(db, acme, "support", actor="test", by="test")
    assert registry.resolve(db, acme, "support", BASE).version_id == adapter.id

    # Another tenant sees neither the name nor the pinned model version.
    for name in ("support", f"support@v{model.version}"):
        with pytest.raises(TailorError) as info:
            registry.resolve(db, other, name, BASE)
        assert info.value.code == "model_not_found"


def test_a_model_over_its_limit_is_refused_and_stores_nothing(env) -> None:  # noqa: F811
    db, _store, limits, acme, _other, tmp = env
    small = type(limits)(base=limits.base, max_rank=16, max_bytes=10_000_000, max_model_bytes=1000)
    with pytest.raises(TailorError) as info:
        register(env, "big", write_model(tmp / "big"), limits=small)
    assert info.value.code == "model_too_large"
    assert registry.list_adapters(db, acme) == []
