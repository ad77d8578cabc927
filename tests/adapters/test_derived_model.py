"""adapters.derived_model and adapters.layer_selection: a smaller model from a subset of layers.

On tiny random models made from a config (a 5-layer Llama in bfloat16, tied and untied, one
sharded; a Qwen3 with per-layer attention types), and on the real SmolLM2 (30 layers -> 15)
where it is prepared. The engine side is tests/integration/test_derived_model_engine.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config

from adapters.derived_model import PROVENANCE, derive_config, derive_model, read_provenance
from adapters.layer_selection import select_layers
from adapters.safetensors_file import read_header
from adapters.store import digest_dir
from adapters.validation import BaseModelSpec, validate_adapter_dir
from core.errors import TailorError
from tests.adapters.test_validation import write_adapter
from tests.trainer.tiny_models import REAL_MODEL, real_model, tiny_tokenizer

LAYERS = 5
# The size of every tiny source model here: small enough to write in a moment.
TINY_SHAPE: dict[str, int] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def save_tiny_llama(model_dir: Path, *, tied: bool = True, shard: str | None = None) -> Path:
    """A random 5-layer Llama in bfloat16 with a tokenizer, a generation config and a stamp."""
    torch.manual_seed(0)
    tok = tiny_tokenizer(["the cat sat on the mat", "layers of a model"], vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tok),
        **TINY_SHAPE,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(model_dir, **({"max_shard_size": shard} if shard else {}))
    tok.save_pretrained(model_dir)
    # How Tailor made the source: not a fact about the derived model, so not copied.
    (model_dir / "tailor-prepared.json").write_text("{}")
    return model_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("src") / "tiny-llama")


def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


def provenance(model_dir: Path) -> dict[str, Any]:
    found = read_provenance(model_dir)
    assert found is not None
    return found


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))


def refused(call: Callable[[], object], code: str) -> TailorError:
    with pytest.raises(TailorError) as info:
        call()
    assert info.value.code == code, info.value.message
    return info.value


# --- which layers ---------------------------------------------------------------------


def test_every_other_keeps_the_even_layers_and_always_the_last() -> None:
    assert select_layers("every-other", 30) == (*range(0, 27, 2), 29)
    assert select_layers("every-other", 5) == (0, 2, 4)
    assert select_layers("every-other", 1) == (0,)
    assert len(select_layers("every-other", 30)) == 15


@pytest.mark.parametrize(
    ("spec", "layers", "kept"),
    [
        ("first:3", 30, (0, 1, 2)),
        ("spread:15", 30, (0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29)),
        ("spread:2", 5, (0, 4)),
        ("spread:5", 5, (0, 1, 2, 3, 4)),
        ("spread:1", 5, (0,)),
        ("0,3,4", 5, (0, 3, 4)),
        (" 0, 3 ", 5, (0, 3)),
        ([1, 2], 5, (1, 2)),
    ],
)
def test_layer_specs(spec: str | list[int], layers: int, kept: tuple[int, ...]) -> None:
    assert select_layers(spec, layers) == kept


@pytest.mark.parametrize("count", range(1, 31))
def test_spread_is_strictly_rising_with_both_ends(count: int) -> None:
    kept = select_layers(f"spread:{count}", 30)
    assert len(kept) == count and list(kept) == sorted(set(kept)) and kept[0] == 0
    assert count == 1 or kept[-1] == 29


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "cannot read"),
        ("every-third", "cannot read"),
        ("-1", "cannot read"),
        ("1.5", "cannot read"),
        ("first:0", "1 to 5"),
        ("spread:6", "1 to 5"),
        ("0,5", "out of range"),
        ("3,1", "ascending"),
        ("1,1", "more than once"),
        ([], "at least one"),
        ([True], "integers"),
    ],
)
def test_bad_layer_specs_are_refused(spec: str | list[int], words: str) -> None:
    error = refused(lambda: select_layers(spec, 5), "invalid_keep_layers")
    assert error.status == 400 and error.param == "keep_layers" and words in error.message


# --- weights ---------------------------------------------------------------------------


def test_kept_layers_are_the_source_layers_bit_for_bit(tiny: Path, tmp_path: Path) -> None:
    made = derive_model(tiny, tmp_path / "out", "0,3,4")
    assert made.written and made.kept == (0, 3, 4)
    src, out = tensors(tiny), tensors(tmp_path / "out")
    expected = {}
    for name, tensor in src.items():
        if ".layers." not in name:
            expected[name] = tensor
        for new, old in enumerate((0, 3, 4)):
            prefix = f"model.layers.{old}."
            if name.startswith(prefix):
                expected[f"model.layers.{new}.{name[len(prefix) :]}"] = tensor
    assert sorted(out) == sorted(expected)
    assert all(same_bits(out[name], expected[name]) for name in out)
    assert "lm_head.weight" not in out  # tied: the head is the embedding, as in the source
    assert {t.dtype for t in out.values()} == {torch.bfloat16}


def test_an_untied_head_is_kept(tmp_path: Path) -> None:
    source = save_tiny_llama(tmp_path / "untied", tied=False)
    derive_model(source, tmp_path / "out", "every-other")
    src, out = tensors(source), tensors(tmp_path / "out")
    assert same_bits(out["lm_head.weight"], src["lm_head.weight"])
    assert not torch.equal(out["lm_head.weight"], out["model.embed_tokens.weight"])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False


def test_a_sharded_source_gives_the_same_model(tiny: Path, tmp_path: Path) -> None:
    sharded = save_tiny_llama(tmp_path / "sharded", shard="20KB")
    assert (sharded / "model.safetensors.index.json").exists() and not (sharded / "model.safetensors").exists()
    derive_model(sharded, tmp_path / "a", "every-other")
    derive_model(tiny, tmp_path / "b", "every-other")
    a, b = tensors(tmp_path / "a"), tensors(tmp_path / "b")
    assert sorted(a) == sorted(b) and all(same_bits(a[n], b[n]) for n in a)


def test_the_derived_model_computes_what_the_source_does_with_those_layers(tiny: Path, tmp_path: Path) -> None:
    derive_model(tiny, tmp_path / "out", "0,2,4")
    source = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    derived = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert derived.config.num_hidden_layers == 3
    source.model.layers = torch.nn.ModuleList(source.model.layers[i] for i in (0, 2, 4))
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        assert torch.equal(source(ids, use_cache=False).logits, derived(ids, use_cache=False).logits)


# --- config, files, provenance ---------------------------------------------------------


def test_config_files_and_provenance(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    derive_model(tiny, out, "every-other")
    source_config = json.loads((tiny / "config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config == {**source_config, "num_hidden_layers": 3}
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (tiny / name).read_bytes(), name
    assert not (out / "tailor-prepared.json").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(p.name for p in tiny.iterdir() if p.name != "tailor-prepared.json"), PROVENANCE]
    )
    recorded = provenance(out)
    assert recorded["source"]["name"] == "tiny-llama" and recorded["source"]["num_hidden_layers"] == LAYERS
    assert recorded["kept_layers"] == [0, 2, 4] and recorded["keep"] == "every-other"
    assert len(recorded["source"]["digest"]) == 64
    listed = {f["name"]: f for f in recorded["files"]}
    assert set(listed) == {p.name for p in out.iterdir()} - {PROVENANCE}
    weights = out / "model.safetensors"
    assert listed["model.safetensors"]["size"] == weights.stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work directory left behind
    # The same digest for the same source, whichever copy of it.
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in tiny.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    assert derive_model(copy, tmp_path / "again", "every-other").source_digest == recorded["source"]["digest"]


def test_the_weights_file_is_aligned_and_readable_by_safetensors(tiny: Path, tmp_path: Path) -> None:
    derive_model(tiny, tmp_path / "out", "first:2")
    header = read_header(tmp_path / "out" / "model.safetensors")
    assert header.metadata == read_header(tiny / "model.safetensors").metadata
    assert all(entry.start % 2 == 0 for entry in header.tensors.values())  # bfloat16: 2-byte aligned


def test_per_layer_config_lists_are_sliced(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kinds = ["full_attention", "sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    config = Qwen3Config(
        vocab_size=64,
        **TINY_SHAPE,
        head_dim=8,
        use_sliding_window=True,
        sliding_window=16,
        layer_types=kinds,
    )
    source = tmp_path / "qwen3"
    AutoModelForCausalLM.from_config(config).save_pretrained(source)
    derive_model(source, tmp_path / "out", "0,1,3")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["layer_types"] == ["full_attention", "sliding_attention", "full_attention"]
    assert AutoConfig.from_pretrained(tmp_path / "out").layer_types == written["layer_types"]
    assert provenance(tmp_path / "out")["sliced_config"] == ["layer_types"]


def test_config_without_per_layer_lists() -> None:
    llama = {
        "model_type": "llama",
        "num_hidden_layers": 4,
        "eos_token_id": [1, 2, 3, 4],
        "no_rope_layers": [1, 0, 1, 1],
    }
    config, sliced = derive_config(llama, (1, 3))
    # Token ids that happen to be as many as the layers are not per-layer settings.
    assert config == {**llama, "num_hidden_layers": 2, "no_rope_layers": [0, 1]} and sliced == ["no_rope_layers"]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"model_type": "gemma2", "num_hidden_layers": 4}, "no layer_types"),
        ({"model_type": "qwen2", "num_hidden_layers": 4, "use_sliding_window": True}, "use_sliding_window"),
        ({"model_type": "llama", "num_hidden_layers": 4, "layer_types": ["full_attention"]}, "one entry for each"),
        ({"model_type": "deepseek_v3", "num_hidden_layers": 4, "layer_types": ["x"] * 4, "first_k_dense_replace": 1},
         "first_k_dense_replace"),
        ({"model_type": "llama", "num_hidden_layers": 4, "mlp_only_layers": [2]}, "mlp_only_layers"),
    ],
)  # fmt: skip
def test_configs_that_place_things_by_layer_position_are_refused(config: dict[str, object], words: str) -> None:
    assert words in refused(lambda: derive_config(config, (0, 2)), "unsupported_model").message


# --- a second run, and what it must not overwrite ----------------------------------------


def test_a_second_run_with_the_same_inputs_does_nothing(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    derive_model(tiny, out, "every-other")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = derive_model(tiny, out, "0,2,4")  # the same layers, named another way
    assert not again.written
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_another_derivation_is_replaced_only_when_forced(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    derive_model(tiny, out, "every-other")
    error = refused(lambda: derive_model(tiny, out, "first:2"), "derived_model_exists")
    assert "--force" in error.message and "[0, 2, 4]" in error.message
    assert provenance(out)["kept_layers"] == [0, 2, 4]
    made = derive_model(tiny, out, "first:2", force=True)
    assert made.written and provenance(out)["kept_layers"] == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old one is gone, no work dirs


def test_a_changed_source_is_not_the_same_input(tiny: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for p in tiny.iterdir():
        (source / p.name).write_bytes(p.read_bytes())
    derive_model(source, tmp_path / "out", "every-other")
    (source / "generation_config.json").write_text('{"do_sample": true}')
    refused(lambda: derive_model(source, tmp_path / "out", "every-other"), "derived_model_exists")


def test_a_damaged_derivation_is_rebuilt(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    derive_model(tiny, out, "every-other")
    digest = digest_dir(out)
    (out / "tokenizer.json").unlink()
    assert derive_model(tiny, out, "every-other").written
    assert digest_dir(out) == digest


def test_an_unreadable_provenance_is_replaced_only_when_forced(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    derive_model(tiny, out, "every-other")
    (out / PROVENANCE).write_text("[not json")
    assert "cannot be read" in refused(lambda: derive_model(tiny, out, "every-other"), "derived_model_exists").message
    assert derive_model(tiny, out, "every-other", force=True).written
    assert provenance(out)["kept_layers"] == [0, 2, 4]


def test_a_directory_that_is_not_a_derived_model_is_never_replaced(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for force in (False, True):
        refused(lambda force=force: derive_model(tiny, out, "every-other", force=force), "derived_model_exists")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert derive_model(tiny, empty, "every-other").written


def test_bad_sources_and_targets_are_refused(tiny: Path, tmp_path: Path) -> None:
    refused(lambda: derive_model(tiny, tiny, "every-other"), "invalid_model")
    refused(lambda: derive_model(tiny, tiny / "inside", "every-other"), "invalid_model")
    refused(lambda: derive_model(tmp_path / "missing", tmp_path / "out"), "invalid_model")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    assert "config.json" in refused(lambda: derive_model(no_config, tmp_path / "out"), "invalid_model").message
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\0" * 16)
    assert "safetensors" in refused(lambda: derive_model(pickled, tmp_path / "out"), "unsupported_model").message
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((tiny / "config.json").read_text())
    (truncated / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes()[:-10])
    assert "truncated" in refused(lambda: derive_model(truncated, tmp_path / "out"), "invalid_model").message
    wrong_count = tmp_path / "wrong-count"
    wrong_count.mkdir()
    (wrong_count / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
    config = json.loads((tiny / "config.json").read_text())
    (wrong_count / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 6}))
    message = refused(lambda: derive_model(wrong_count, tmp_path / "out"), "unsupported_model").message
    assert "model.layers (5)" in message
    refused(lambda: derive_model(tiny, tmp_path / "out", "0,9"), "invalid_keep_layers")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_paths_are_resolved(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    made = derive_model(os.path.relpath(tiny, tmp_path), "rel", "first:1")
    assert made.out == tmp_path / "rel" and (tmp_path / "rel" / "config.json").exists()


# --- the real model ---------------------------------------------------------------------


@real_model
def test_transformers_loads_the_derived_smollm2_and_generates(tmp_path: Path) -> None:
    out = tmp_path / "SmolLM2-15L"
    made = derive_model(REAL_MODEL, out, "every-other")
    assert made.kept == (*range(0, 27, 2), 29) and made.source_layers == 30
    # About half the transformer weights, all of the 28M tied embedding: 163 MB of 269 MB.
    assert 0.55 < (out / "model.safetensors").stat().st_size / (REAL_MODEL / "model.safetensors").stat().st_size < 0.65
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert model.config.num_hidden_layers == 15 and len(model.model.layers) == 15
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt["input_ids"] if not isinstance(prompt, torch.Tensor) else prompt
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 8
    assert tok.decode(generated[0, ids.shape[1] :]).strip()


@real_model
def test_tailor_validates_adapters_against_the_derived_base(tmp_path: Path) -> None:
    out = tmp_path / "SmolLM2-15L"
    derive_model(REAL_MODEL, out, "every-other")
    base = BaseModelSpec.from_config_dir(out)
    assert base.num_layers == 15 and base.module_shapes == BaseModelSpec.from_config_dir(REAL_MODEL).module_shapes
    fits = write_adapter(tmp_path / "fits", tensors=_lora_for(base, layers=15))
    validate_adapter_dir(fits, base=base, max_rank=16, max_bytes=10**8)
    # An adapter of the 30-layer source names layers the derived model does not have.
    too_deep = write_adapter(tmp_path / "too-deep", tensors=_lora_for(base, layers=30))
    with pytest.raises(TailorError, match="layer"):
        validate_adapter_dir(too_deep, base=base, max_rank=16, max_bytes=10**8)


def _lora_for(base: BaseModelSpec, *, layers: int) -> dict[str, torch.Tensor]:
    """A zero rank-4 LoRA on q_proj and v_proj of `layers` layers shaped for `base`."""
    tensors = {}
    for layer in range(layers):
        for module in ("q_proj", "v_proj"):
            fan_in, fan_out = base.module_shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.zeros(4, fan_in)
            tensors[f"{prefix}.lora_B.weight"] = torch.zeros(fan_out, 4)
    return tensors
