"""Decide whether an uploaded full model (a complete HF safetensors checkpoint) may be served.

A model version is served by engines of its own (adapters.dedicated), so unlike an adapter it
need not fit the base model: it must be a checkpoint vLLM loads without running anything it
brought along. Accepted: a flat directory of regular files holding `config.json` (a decoder
model: `architectures`, `model_type`, `num_hidden_layers`; no `auto_map`, which would need
remote code), safetensors weights (`model.safetensors`, or shards named by
`model.safetensors.index.json`, each header readable and its data complete), a tokenizer
(`tokenizer_config.json` plus `tokenizer.json`, `tokenizer.model` or `vocab.json`), and
otherwise only the generation, chat-template and provenance files such directories carry.
Never pickles, never Python files. Everything is checked from file headers.

Archives are unpacked by adapters.archives under the same safety rules as adapters'; every
refusal is a 400 saying what is wrong, in the words adapters.validation uses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from adapters.safetensors_file import SafetensorsError, read_header
from adapters.validation import CONFIG_FILE, README_FILE
from adapters.validation.files import PICKLE_SUFFIXES, check_capped_size, flat_files
from core.errors import TailorError, bad_request

MODEL_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# Any one of these is the tokenizer's vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# Small JSON and text files a HF checkpoint carries besides weights and config.
OTHER_FILES = frozenset(
    {
        TOKENIZER_CONFIG,
        *TOKENIZER_FILES,
        INDEX,
        "merges.txt",
        "special_tokens_map.json",
        "added_tokens.json",
        "generation_config.json",
        "chat_template.jinja",
        "chat_template.json",
        "preprocessor_config.json",
        "tailor-derived.json",
        README_FILE,
        "LICENSE",
    }
)
# A config or template past this is padding, not a model's description.
SMALL_FILE_MAX_BYTES: Mapping[str, int] = MappingProxyType(
    {name: 1 << 20 for name in (MODEL_CONFIG, TOKENIZER_CONFIG, "generation_config.json", "chat_template.jinja")}
)


@dataclass(frozen=True)
class ModelManifest:
    """What Tailor learned about an accepted full model."""

    architecture: str
    model_type: str
    num_layers: int
    files: tuple[str, ...]
    total_bytes: int


def is_model_dir(path: Path) -> bool:
    """Whether `path` looks like a full model (a config.json) rather than a PEFT adapter."""
    return (path / MODEL_CONFIG).is_file() and not (path / CONFIG_FILE).exists()


def validate_model_dir(path: Path | str, *, max_bytes: int) -> ModelManifest:
    """Accept a full HF safetensors checkpoint directory, or raise a 400 saying why not."""
    path = Path(path)
    sizes = _list_files(path)
    total = sum(sizes.values())
    if total > max_bytes:
        raise bad_request(
            f"model is {total} bytes; the largest accepted model is {max_bytes} bytes", code="model_too_large"
        )
    config = _read_config(path / MODEL_CONFIG)
    _check_weights(path, sizes)
    _check_tokenizer(path, sizes)
    return ModelManifest(
        architecture=config["architectures"][0],
        model_type=config["model_type"],
        num_layers=config["num_hidden_layers"],
        files=tuple(sorted(sizes)),
        total_bytes=total,
    )


def _list_files(path: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name, size in flat_files(path, "model", "put its files directly in the top level", _invalid):
        if not _allowed(name):
            raise _invalid(_unexpected_file_message(name))
        check_small_model_file(name, size)
        sizes[name] = size
    if MODEL_CONFIG not in sizes:
        raise _invalid(f"model is missing {MODEL_CONFIG}; a model saved with save_pretrained() has one")
    return sizes


def _allowed(name: str) -> bool:
    return name in OTHER_FILES or name == MODEL_CONFIG or name.endswith(".safetensors")


def check_small_model_file(name: str, size: int) -> None:
    """A config or template past its cap is refused (also from an archive member's declared size)."""
    check_capped_size(name, size, SMALL_FILE_MAX_BYTES, "model_file_too_large")


def _unexpected_file_message(name: str) -> str:
    if name.lower().endswith(PICKLE_SUFFIXES):
        return (
            f"model contains {name}: safetensors only. Pickle-based weights can run code when loaded; "
            "save the model with save_pretrained(..., safe_serialization=True)"
        )
    if name.endswith(".py"):
        return f"model contains {name}: models that bring their own code (trust_remote_code) are not served"
    return f"model contains unexpected file {name}; allowed: {MODEL_CONFIG}, *.safetensors, " + ", ".join(
        sorted(OTHER_FILES)
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(f"{path.name} is not valid JSON: {exc}") from None


def _read_config(path: Path) -> dict[str, Any]:
    config = _read_json(path)
    if not isinstance(config, dict):
        raise _invalid(f"{MODEL_CONFIG} must be a JSON object")
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures or not all(isinstance(a, str) for a in architectures):
        raise _invalid(f"{MODEL_CONFIG} needs `architectures`, a list of model class names such as LlamaForCausalLM")
    if not isinstance(config.get("model_type"), str):
        raise _invalid(f"{MODEL_CONFIG} needs a string `model_type`")
    layers = config.get("num_hidden_layers")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise _invalid(f"{MODEL_CONFIG} needs a positive integer `num_hidden_layers` (a decoder-only text model)")
    if config.get("auto_map"):
        raise _invalid(
            f"{MODEL_CONFIG} has auto_map: models that need their own code (trust_remote_code) are not served"
        )
    return config


def _check_weights(path: Path, sizes: Mapping[str, int]) -> None:
    shards = sorted(n for n in sizes if n.endswith(".safetensors"))
    if INDEX in sizes:
        index = _read_json(path / INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise _invalid(f"{INDEX} has no weight_map")
        named = set(weight_map.values())
        missing = sorted(str(n) for n in named if n not in sizes)
        if missing:
            raise _invalid(f"{INDEX} names shards that are not in the model: {', '.join(missing[:5])}")
        if set(shards) != named:
            raise _invalid(f"safetensors files not in {INDEX}: {', '.join(sorted(set(shards) - named)[:5])}")
    elif shards != [WEIGHTS]:
        raise _invalid(f"model needs its weights as {WEIGHTS}, or shards listed by {INDEX}")
    tensors = 0
    for shard in shards:
        try:
            tensors += len(read_header(path / shard).tensors)
        except SafetensorsError as exc:
            raise _invalid(f"{shard} is corrupt: {exc}") from None
    if not tensors:
        raise _invalid("the model's safetensors files hold no tensors")


def _check_tokenizer(path: Path, sizes: Mapping[str, int]) -> None:
    if TOKENIZER_CONFIG not in sizes or not any(name in sizes for name in TOKENIZER_FILES):
        raise _invalid(
            f"model has no tokenizer: save it with the model ({TOKENIZER_CONFIG} and one of "
            f"{', '.join(TOKENIZER_FILES)})"
        )
    if not isinstance(_read_json(path / TOKENIZER_CONFIG), dict):
        raise _invalid(f"{TOKENIZER_CONFIG} must be a JSON object")


def _invalid(message: str) -> TailorError:
    return bad_request(message, code="invalid_model")
